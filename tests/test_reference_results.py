"""The committed reference results (results/reference/) are whole, consistent and about the shipped data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matsteer.data import load_mc_questions
from matsteer.eval.config import METHODS, SEEDED
from matsteer.eval.report import markdown_table
from matsteer.store.provenance import data_hashes

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"


@pytest.fixture(scope="module")
def report():
    path = REFERENCE / "eval.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the reference results are committed (make reference writes them).")
    return json.loads(path.read_text(encoding="utf-8"))


def test_reference_covers_whole_test_splits_and_every_method(report):
    for task, n in report["sizes"]["test"].items():
        assert n == len(load_mc_questions(task, "test")), task
    # Every method its config ran, and any added since (matsteer.eval.extend), all known: the committed run
    # (2026-12-02) predates the temperature controls and the other methods added to METHODS since.
    assert set(report["config"]["methods"]) <= set(report["methods"]) <= set(METHODS)
    added = {m for addition in report.get("additions", []) for m in addition["methods"]}
    for name, entry in report["methods"].items():
        seeds = [0, 1, 2] if name in SEEDED else [0]
        if name in added:  # a costly row added later may be scored on the first seeds only
            seeds = seeds[: len(entry["seeds"])]
        assert entry["seeds"] == seeds and seeds
        for task, n in report["sizes"]["test"].items():
            items = entry["test"][task]["per_item"]
            assert len(items) == len(seeds) and all(len(row) == n for row in items)
    assert set(report["intervals"]) == {"vs_none", "vs_best_baseline"}


def test_reference_table_is_its_json_and_its_data_is_ours(report):
    assert (REFERENCE / "eval.md").read_text(encoding="utf-8") == markdown_table(report)
    recorded = report["provenance"]["data"]
    assert recorded == data_hashes(recorded)  # the shipped data and splits are the ones it was run on
    assert report["provenance"]["git_commit"] and "+dirty" not in report["provenance"]["git_commit"]
    for figure in ("method_table", "method_comparison"):
        assert (REFERENCE / "figures" / f"{figure}.png").is_file()


def test_reference_bbq_primary_is_disambiguated_accuracy_recomputed_from_the_data(report):
    """BBQ's primary in the committed file is disambiguated accuracy (re-scored from the balanced one, which the dev
    selections were made under): every method's BBQ per_item is its correctness (answers, or the kept correctness)
    times the disambiguated weights, every seed's mean is that of the tasks' per_item means, and the constant row is
    :func:`constant_row` on the shipped test questions; eval.md says that the dev selections predate the change."""
    import numpy as np

    from matsteer.eval.comparison import bbq_correct
    from matsteer.eval.task_metrics import BBQItems, bbq_item_weights
    from matsteer.eval.tasks import PRIMARY, constant_row, primary_of

    assert primary_of(report, "bbq") == PRIMARY["bbq"] == "disambig"
    assert report["primary_change"]["from"] == report["primary_change"]["dev_selection"] == "balanced"
    assert "was made under balanced, since the dev trials cannot be re-scored" in (REFERENCE / "eval.md").read_text(
        encoding="utf-8")
    qs = load_mc_questions("bbq", "test")
    items = BBQItems.from_questions(qs)
    dis = np.array(items.condition) == "disambig"
    weights = np.array(bbq_item_weights(items.condition, "disambig"))
    tasks = report["tasks"]
    for name, entry in report["methods"].items():
        bbq = entry["test"]["bbq"]
        correct = bbq_correct(entry, items, "disambig")
        per_item = np.array(bbq["per_item"])
        assert np.allclose(per_item, correct * weights, atol=1e-12) and not per_item[:, ~dis].any(), name
        assert per_item.mean() == pytest.approx(bbq["disambig"]["mean"]) == pytest.approx(correct[:, dis].mean())
        assert correct[:, ~dis].mean() == pytest.approx(bbq["ambig"]["mean"])
        balanced = (correct[:, dis].mean(axis=1) + correct[:, ~dis].mean(axis=1)) / 2
        assert balanced.mean() == pytest.approx(bbq["balanced"]["mean"]), name
        seeds = np.mean([np.array(entry["test"][t]["per_item"]).mean(axis=1) for t in tasks], axis=0)
        assert seeds.mean() == pytest.approx(entry["test"]["mean"]["mean"]), name
        assert ("answers" in bbq) != ("correct" in bbq)
    const = report["reference"]["constant"]["test"]
    row = constant_row("bbq", qs)
    assert const["bbq"]["answer"] == row["answer"] and const["bbq"]["per_item"] == [row["per_item"]]
    assert const["bbq"]["disambig"]["mean"] == row["disambig"] == max(
        np.mean([q.labels[[k for k in range(3) if str(k) != q.meta["unknown_answer"]][pos]] for q, d in zip(qs, dis)
                 if d]) for pos in (0, 1))
    assert const["mean"]["mean"] == pytest.approx(np.mean([np.mean(const[t]["per_item"][0]) for t in tasks]))
    # What the change means on the committed run: MAT-Steer's BBQ primary is below no steering's, and flagged.
    mat, none = (report["methods"][n]["test"]["bbq"]["disambig"]["mean"] for n in ("mat_steer", "none"))
    assert mat < none and report["bbq_guard"]["mat_steer"]["verdict"] == "abstaining"
