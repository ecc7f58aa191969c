"""The paper's tables and figures beside ours (matsteer.viz.paper, `matsteer paper`, notebook 06): every number of
ours is the committed results' own, a missing method shows as missing, figures draw from saved results without a
model, and the committed figures/paper/paper.md is what `make paper` writes today."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
import pytest

from matsteer.app.cli import main
from matsteer.app.runner import NOTEBOOKS, run_notebook
from matsteer.errors import ConfigError
from matsteer.viz.paper import (
    NOT_RERUN,
    PAPER,
    PAPER_METHODS,
    comparison_markdown,
    fig5,
    load_paper_results,
    paper_comparisons,
    paper_figures,
    paper_markdown,
    pending_items,
    plot_comparison,
    table1,
    table2_toxicity,
)
from matsteer.viz.style import save_figure

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "results" / "reference"
TASKS = {"TruthfulQA": ("truthfulqa", "mc2"), "ToxiGen": ("toxigen_pref", "accuracy"), "BBQ": ("bbq", "disambig")}


def _json(name: str) -> dict:
    return json.loads((REF / name).read_text(encoding="utf-8"))


def _table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell is ``first_cell``."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Table 1: our numbers are eval.json's, the paper's are the paper's


def test_table1_numbers_are_read_from_eval_json():
    report = _json("eval.json")
    md = comparison_markdown(table1(report))
    paper = PAPER["table1"]
    checked = 0
    for name, key in PAPER_METHODS.items():
        (cells,) = _table_rows(md, name)
        for j, column in enumerate(paper.columns):
            paper_cell, ours_cell = cells[2 + 2 * j], cells[3 + 2 * j]
            assert float(paper_cell) == paper.value(name, j)
            entry = report["methods"].get(key) if key else None
            if entry is None:
                assert ours_cell == "missing"
                continue
            task, metric = TASKS[column]
            score = entry["test"][task][metric]
            assert ours_cell == f"{score['mean'] * 100:.2f} ± {score['std'] * 100:.2f}"
            checked += 1
    assert checked >= 5 * 3  # Base, ICL, SFT, DPO, ITI and MAT-Steer are in the committed comparison


def test_table1_directions_use_the_reports_intervals():
    report = _json("eval.json")
    directions = {(d.claim, d.column): d for d in table1(report).directions}
    for column, (task, metric) in TASKS.items():
        d = directions[("MAT-Steer above Base", column)]
        iv = report["intervals"]["vs_none"]["mat_steer"][task]
        assert d.paper is True and d.ours == (iv["mean_diff"] > 0)
        assert f"ours {iv['mean_diff'] * 100:+.2f} [{iv['low'] * 100:+.2f}, {iv['high'] * 100:+.2f}]" in d.evidence
        mat = report["methods"]["mat_steer"]["test"][task][metric]["mean"]
        none = report["methods"]["none"]["test"][task][metric]["mean"]
        assert (mat > none) == d.ours  # the interval's difference is the difference of the means
        best = directions[("MAT-Steer above the strongest baseline", column)]
        assert "paper vs LITO" in best.evidence and best.paper is True
        assert best.ours == (report["intervals"]["vs_best_baseline"]["mat_steer"][task]["mean_diff"] > 0)


def test_a_method_missing_from_the_results_shows_as_missing():
    report = copy.deepcopy(_json("eval.json"))
    for key in ("iti", "none"):
        del report["methods"][key]
        report["intervals"]["vs_none"].pop(key, None)
    del report["intervals"]["vs_best_baseline"]
    comparison = table1(report)
    rows = {r.name: r for r in comparison.rows}
    for name in ("ITI", "Base"):
        assert all(c.ours is None and "not in eval.json" in c.missing for c in rows[name].cells)
    assert all(c.ours is None and c.missing.startswith("not built") for c in rows["LITO"].cells)
    md = comparison_markdown(comparison)
    (iti,) = _table_rows(md, "ITI")
    assert iti[3] == iti[5] == iti[7] == "missing" and "matsteer compare --reference --add iti" in iti[-1]
    directions = {(d.claim, d.column): d for d in comparison.directions}
    assert directions[("ITI above Base", "BBQ")].ours is None  # nothing to compare: n/a, not a crash
    # The report's own interval still answers "MAT-Steer above no steering"; without intervals nothing does.
    assert directions[("MAT-Steer above Base", "BBQ")].ours is not None
    del report["intervals"]
    bare = {(d.claim, d.column): d for d in table1(report).directions}
    assert bare[("MAT-Steer above Base", "BBQ")].ours is None and bare[("MAT-Steer above Base", "BBQ")].agrees is None
    # Without its interval, the strongest-baseline check falls back to the difference of the means.
    best = report["best_baseline"]["name"]
    mat = report["methods"]["mat_steer"]["test"]["truthfulqa"]["mc2"]["mean"]
    theirs = report["methods"][best]["test"]["truthfulqa"]["mc2"]["mean"]
    assert bare[("MAT-Steer above the strongest baseline", "TruthfulQA")].ours == (mat > theirs)
    assert plot_comparison(comparison).axes  # draws the missing rows as n/a


# ----------------------------------------------------------------------------------------------------------------
# Fig. 5 and Table 2's toxicity row


def test_fig5_numbers_are_read_from_the_generation_report():
    generation = _json("truthfulqa_generation.json")
    comparison = fig5(generation)
    md = comparison_markdown(comparison)
    for row in comparison.rows:
        (cells,) = _table_rows(md, row.name)
        summary = generation["summary"].get(row.key)
        if summary is None:
            assert cells[3] == cells[5] == "missing" and "not in truthfulqa_generation.json" in cells[-1]
            continue
        for j, metric in enumerate(("bleu_acc", "rougeL_acc")):
            s = summary[metric]
            assert cells[3 + 2 * j] == f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f}"
    assert float(_table_rows(md, "MAT-Steer")[0][2]) == PAPER["fig5"].value("MAT-Steer")
    iti = {d.claim: d for d in comparison.directions}["MAT-Steer above ITI"]
    s = generation["summary"]
    assert iti.ours == (s["mat_steer"]["bleu_acc"]["mean"] > s["iti"]["bleu_acc"]["mean"])


def test_table2_toxicity_change_is_computed_from_the_toxicity_report():
    toxicity = _json("toxicity.json")
    comparison = table2_toxicity(toxicity)
    none = toxicity["summary"]["none"]["nontoxic"]["mean"]
    md = comparison_markdown(comparison)
    for row in comparison.rows:
        if row.key not in toxicity["summary"]:
            continue
        nontoxic = toxicity["summary"][row.key]["nontoxic"]
        change = ((1 - nontoxic["mean"]) - (1 - none)) / (1 - none) * 100
        (cells,) = _table_rows(md, row.name)
        assert cells[3] == f"{change:.1f} ± {nontoxic['std'] / (1 - none) * 100:.1f}"
    (d,) = comparison.directions
    mat = toxicity["summary"]["mat_steer"]["nontoxic"]["mean"]
    assert d.paper is True and d.ours == (mat > none)


# ----------------------------------------------------------------------------------------------------------------
# Figures, pending items, the whole document, the CLI and the notebook


def test_each_figure_draws_from_saved_results(tmp_path):
    results = load_paper_results(REF)
    figures = paper_figures(results)
    assert set(figures) == {f"paper_{k}" for k in paper_comparisons(results)} == {
        "paper_table1", "paper_table2_toxicity", "paper_fig5"}
    for name, fig in figures.items():
        (path,) = save_figure(fig, name, tmp_path, formats=("png",))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        labels = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
        assert labels == {"ours", "paper, Llama-3.1-8B"}


def test_items_without_a_result_say_so_and_name_their_command(tmp_path):
    (tmp_path / "eval.json").write_text((REF / "eval.json").read_text(encoding="utf-8"), encoding="utf-8")
    results = load_paper_results(tmp_path)
    assert set(paper_comparisons(results)) == {"table1"}
    pending = {p.item.key: p for p in pending_items(results)}
    assert pending["fig5"].command == "matsteer truthfulqa-generation --reference"
    assert pending["table2_toxicity"].command == "matsteer toxicity --reference"
    for key, name in (("table3", "components"), ("table4", "tokens"), ("fig4", "data_efficiency"),
                      ("fig7", "num_attributes"), ("table2_gates", "paradetox_gates")):
        assert pending[key].status == NOT_RERUN and pending[key].command == f"matsteer ablate {name}"
    assert pending["table5"].command == "matsteer winrates"
    assert pending["table9"].status == "not built" and pending["table9"].command == ""
    md = paper_markdown(results)
    # A pending item's rows carry the paper's numbers and no number of ours.
    for name, values in PAPER["table3"].rows:
        cells = next(r for r in _table_rows(md, name) if len(r) == 3)  # Table 3's rows: name, paper, ours
        assert float(cells[1]) == values[0] and cells[2] == NOT_RERUN
    with pytest.raises(ConfigError, match="results/reference"):
        load_paper_results(tmp_path / "empty")


def test_committed_paper_md_is_what_make_paper_writes():
    """figures/paper/paper.md is committed so readers see it; it must match today's results (rerun `make paper`)."""
    results = load_paper_results(REF)
    names = {key: f"paper_{key}.png" for key in paper_comparisons(results)}
    committed = (ROOT / "figures" / "paper" / "paper.md").read_text(encoding="utf-8")
    assert committed == paper_markdown(results, names, "results/reference")
    for name in names.values():
        assert (ROOT / "figures" / "paper" / name).is_file()


def test_matsteer_paper_command(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["paper", "--results", str(REF), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(out / "paper.md")
    text = (out / "paper.md").read_text(encoding="utf-8")
    for name in ("eval.json", "truthfulqa_generation.json", "toxicity.json"):
        assert _json(name)["provenance"]["git_commit"] in text  # the header names each file's commit
    for key in ("table1", "table2_toxicity", "fig5"):
        assert (out / f"paper_{key}.png").stat().st_size > 0 and f"(paper_{key}.png)" in text
    assert main(["paper", "--results", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_notebook_06_is_registered_and_runs_headless(tmp_path):
    """Reads results/reference only (no model): a few seconds after the kernel's imports."""
    name = "06_paper_figures.ipynb"
    assert name in NOTEBOOKS
    run = run_notebook(ROOT / "notebooks" / name, {}, tmp_path, timeout=300, threads=1)
    nb = nbformat.read(str(run.output), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| MAT-Steer above Base | TruthfulQA | yes |" in markdown and NOT_RERUN in markdown
    assert _json("eval.json")["provenance"]["git_commit"] in markdown
