"""Adding methods to a finished comparison (``eval.json``) without re-running it: the new methods are chosen by
the same dev rule on the same dev questions, scored on the same test questions and seeds, and every interval is
recomputed; each addition records its own commit, dtype and machine in ``report["additions"]``.

No steering is re-scored beside them as a check: its per-question test scores are compared with the committed
row's (``agreement``), so a change of machine or kernels that moved the unsteered model is visible, not hidden.

Without a model: :func:`refresh_statistics` recomputes a comparison's statistics with this version's, and
:func:`rescore_bbq_primary` re-scores one written under an earlier BBQ primary (``balanced``) under the current one
(``disambig``) from its stored answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matsteer.activations.models import cpu_has_native_bf16
from matsteer.data import MCQuestion, load_mc_questions
from matsteer.errors import ConfigError, DataError
from matsteer.eval.comparison import (
    add_question_facts,
    add_statistics,
    bbq_correct,
    mean_std_or_none,
    method_entry,
    summarise_seeds,
)
from matsteer.eval.config import METHODS, EvalConfig
from matsteer.eval.experiment import Experiment, ignore_step, provenance
from matsteer.eval.report import write_report
from matsteer.eval.task_metrics import BBQItems, bbq_item_weights
from matsteer.eval.tasks import (
    BBQ_PRIMARY_CHANGED,
    PRIMARY,
    constant_row,
    for_task,
    parse_sources,
    primary_of,
)
from matsteer.files import read_json
from matsteer.store.provenance import cpu_model

#: The settings that fix which questions, model, site and seeds a comparison scores: an addition must share them.
SHARED_SETTINGS = ("dev_limits", "test_limits", "probes", "positions", "sources", "seeds", "steer_special")
SHARED_DEMO = ("model", "dtype", "layer", "site", "datasets")


def check_same_footing(cfg: EvalConfig, committed: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming every setting where ``cfg`` differs from the comparison's ``config``
    (its seeds may be a subset of the comparison's)."""
    now = cfg.to_dict()
    diff = [k for k in SHARED_SETTINGS if k != "seeds" and _plain(now[k]) != _plain(committed.get(k))]
    if not set(cfg.seeds) <= set(committed.get("seeds", ())):
        diff.append("seeds")
    diff += [f"demo.{k}" for k in SHARED_DEMO if _plain(now["demo"][k]) != _plain(committed["demo"].get(k))]
    if diff:
        raise ConfigError(f"The comparison was run with other settings ({', '.join(diff)}); added methods would not "
                          "be on its footing. Fix: pass the config it was run with (e.g. EvalConfig.reference()).")


def _plain(value: Any) -> Any:
    """Tuples as lists, as JSON reads them back."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def agreement(new: Sequence[float], old: Sequence[float]) -> dict[str, float]:
    """How far two runs' per-question scores of one method agree: the share of identical questions and the
    difference of their means."""
    if len(new) != len(old):
        raise ConfigError(f"The re-scored row has {len(new)} questions, the committed one {len(old)}.")
    same = sum(float(a) == float(b) for a, b in zip(new, old)) / max(len(old), 1)
    return {"identical_share": same, "mean_diff": (sum(new) - sum(old)) / max(len(old), 1)}


def add_methods(results_dir: str | Path, names: Sequence[str], cfg: EvalConfig, progress: bool = True,
                on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Add ``names`` (methods of :data:`METHODS`) to the comparison in ``results_dir``, run with ``cfg``; rewrite
    its ``eval.json`` and ``eval.md``. Returns the updated report. ``cfg.seeds`` may be fewer than the
    comparison's (a costly method scored on its first seeds only; each row records its seeds). A seeded method
    already there, scored on one seed, is extended instead: scored on ``cfg.seeds`` (none of them its own) at the
    setting it chose on dev, as :func:`matsteer.eval.comparison.run_evaluation` keeps a first-seed choice for the
    other seeds; its selection is left as it was."""
    step = on_step or ignore_step
    path = Path(results_dir) / "eval.json"
    report = read_json(path, "comparison results")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    extended = [n for n in names if n in report["methods"]]
    for name in extended:
        _check_new_seeds(report["methods"][name], name, cfg.seeds, path)
    check_same_footing(cfg, report["config"])
    if cfg.layers or report["config"].get("layers"):
        raise ConfigError("This comparison chose each method's layer on dev (EvalConfig.layers); adding methods to "
                          "it is not supported. Fix: re-run the whole comparison with the methods added.")
    step("comparison: set-up for the added methods (model, dev and test questions)")
    ex = Experiment(cfg, progress, on_step)
    overrides = report["selection"]["training_default"]["chosen"]["overrides"]
    for name in names:
        if name in extended:
            report["methods"][name] = _with_seeds(report["methods"][name], ex, name, overrides, step)
            continue
        chosen, trials = ex.tune(name, cfg.seeds[0], overrides)
        report["selection"][name] = {"chosen": chosen, "dev_trials": trials}
        report["methods"][name] = method_entry(ex, name, chosen, overrides, step)
    step("comparison: test: none (the check against the committed row)")
    none = ex.test_result(ex.method("none", {}, cfg.seeds[0]))
    check = {t: agreement(none[t]["per_item"], report["methods"]["none"]["test"][t]["per_item"][0])
             for t in ex.test.all_tasks}
    add_question_facts(report, ex.test.questions)
    add_statistics(report, ex.test.tasks, ex.test.probes, cfg.n_boot)
    record = {"methods": list(names), "seeds": list(cfg.seeds), "extended": extended, "provenance": provenance(ex),
              "cpu_model": cpu_model(), "cpu_native_bf16": cpu_has_native_bf16(), "torch_threads": torch.get_num_threads(),
              "none_rescored": check, "timings": ex.timings, "dev_primary": dict(PRIMARY)}
    report.setdefault("additions", []).append(record)
    write_report(report, Path(results_dir))
    return report


def _check_new_seeds(entry: Mapping[str, Any], name: str, seeds: Sequence[int], path: Path) -> None:
    """Raise :class:`ConfigError` unless ``name``'s row can take ``seeds``: seeded, scored on one seed (a row of
    several keeps only its metrics' mean ± std, not each seed's value), and none of ``seeds`` its own."""
    if not entry.get("seeded"):
        raise ConfigError(f"{name} is in {path} already and does not depend on the seed. Fix: re-run the whole "
                          "comparison to replace it.")
    if len(entry["seeds"]) != 1:
        raise ConfigError(f"{name} in {path} has seeds {entry['seeds']}; only a row scored on one seed can be "
                          "extended (a row of several keeps each metric's mean and std, not each seed's value). Fix: "
                          "re-run the whole comparison.")
    if any("correct" in v for v in entry["test"].values() if isinstance(v, Mapping)):
        raise ConfigError(f"{name} in {path} was re-scored without its stored answers; its seed cannot be summarised "
                          "with new ones. Fix: re-run the whole comparison.")
    if set(seeds) & set(entry["seeds"]):
        raise ConfigError(f"{name} in {path} has seed {entry['seeds'][0]} already. Fix: --seeds with new seeds only, "
                          "e.g. --seeds 1 2.")


def _seed_run(test: Mapping[str, Any]) -> dict[str, Any]:
    """The one seed's run back from a one-seed row's summarised ``test`` (the inverse of :func:`summarise_seeds`
    there: each metric's mean is that seed's value)."""
    def value(v: Any) -> Any:
        return v["mean"] if isinstance(v, Mapping) and set(v) == {"mean", "std", "n"} else v

    run: dict[str, Any] = {}
    for task, entry in test.items():
        if task == "mean":
            run[task] = value(entry)
        elif task == "side_effects":
            run[task] = {k: value(v) for k, v in entry.items()}
        else:
            run[task] = {k: v[0] if k in ("per_item", "answers", "condition_counts") else value(v)
                         for k, v in entry.items()}
    return run


def _with_seeds(entry: dict[str, Any], ex: Experiment, name: str, overrides: dict[str, Any],
                step: Callable[[str], None]) -> dict[str, Any]:
    """``entry`` (one seed) with ``ex.cfg.seeds`` scored on test at its chosen ``params`` and summarised with it."""
    runs = [_seed_run(entry["test"])]
    for i, seed in enumerate(ex.cfg.seeds, 1):
        step(f"comparison: test: {name}, added seed {seed} ({i}/{len(ex.cfg.seeds)})")
        runs.append(ex.test_result(ex.method(name, entry["params"], seed, overrides)))
    return {**entry, "seeds": [*entry["seeds"], *ex.cfg.seeds], "test": summarise_seeds(runs)}


def _test_questions(report: Mapping[str, Any]) -> dict[str, list[MCQuestion]]:
    """The test questions of every task and probe of a comparison, as its ``config`` names them (limits, sources)."""
    cfg = report["config"]
    return {t: load_mc_questions(t, "test", limit=for_task(cfg["test_limits"], t),
                                 source=for_task(parse_sources(cfg.get("sources")), t))
            for t in (*report["tasks"], *report["probes"])}


def refresh_statistics(results_dir: str | Path, n_boot: int | None = None) -> dict[str, Any]:
    """Recompute every interval, the detectable differences, Holm's correction and BBQ's guard of the comparison
    in ``results_dir`` with the statistics of this version (clusters and BBQ facts from the test questions its
    ``config`` names; no model runs), and rewrite its ``eval.json`` and ``eval.md``."""
    path = Path(results_dir) / "eval.json"
    report = read_json(path, "comparison results")
    questions = _test_questions(report)
    add_question_facts(report, questions)
    add_statistics(report, report["tasks"], report["probes"], n_boot or int(report["config"]["n_boot"]))
    write_report(report, Path(results_dir))
    return report


def _seed_means(entry: Mapping[str, Any], tasks: Sequence[str]) -> list[float]:
    """Per seed, the mean over ``tasks`` of the means of ``test[task]["per_item"]`` (each task's primary)."""
    per_task = [np.asarray(entry["test"][t]["per_item"], dtype=np.float64).mean(axis=1) for t in tasks]
    return [float(x) for x in np.mean(per_task, axis=0)]


def _check_close(what: str, got: float, want: Any) -> None:
    """Raise :class:`DataError` where a recomputed value differs from the stored one (a file not from these
    questions, or hand-edited)."""
    stored = want["mean"] if isinstance(want, Mapping) else want
    if stored is None or not math.isclose(got, float(stored), rel_tol=0.0, abs_tol=1e-9):
        raise DataError(f"{what}: recomputed {got!r}, the file has {stored!r}; it does not belong to these test "
                        "questions. Nothing was converted.")


def convert_bbq_primary(report: dict[str, Any], questions: Mapping[str, Sequence[MCQuestion]]) -> dict[str, Any]:
    """Re-score a comparison (and each protocol part of it) whose BBQ primary is an earlier one (``balanced``) under
    :data:`~matsteer.eval.tasks.PRIMARY`'s (``disambig``), from what it stores and the test ``questions`` (no model):
    every method's BBQ ``per_item`` (from its ``answers``, else from its old ``per_item``: correctness times the
    old weights, :func:`matsteer.eval.comparison.bbq_correct`; a row without answers keeps that correctness as
    ``correct``, per seed one ``0`` / ``1`` per question, since the new weights are 0 on ambiguous questions), the
    per-seed mean over the attribute tasks (``test["mean"]``), the constant's BBQ row
    (:func:`matsteer.eval.tasks.constant_row`) and mean, ``primary`` and ``primary_change`` (the dev selections were
    made under the old primary: dev trials cannot be re-scored without the model). Before anything changes, every
    stored BBQ accuracy, ``per_item`` and mean is checked against its recomputation (:class:`DataError`). Changes
    ``report`` in place (statistics not refreshed: :func:`rescore_bbq_primary` does that) and returns it."""
    if "bbq" not in report.get("tasks", ()):
        raise ConfigError("This comparison has no BBQ task: nothing to re-score.")
    items = BBQItems.from_questions(questions["bbq"])
    parts = [report, *report.get("protocols", {}).values()]
    staged = [_convert_part(part, items, questions) for part in parts]  # every check before any change
    for part, (entries, constant, old) in zip(parts, staged):
        for entry, bbq in entries:
            entry["test"]["bbq"].update(bbq["bbq"])
            entry["test"]["mean"] = bbq["mean"]
        if constant is not None:
            part["reference"]["constant"]["test"]["bbq"] = constant["bbq"]
            part["reference"]["constant"]["test"]["mean"] = constant["mean"]
        if old != PRIMARY["bbq"]:
            part["primary_change"] = {"task": "bbq", "from": old, "to": PRIMARY["bbq"], "date": BBQ_PRIMARY_CHANGED,
                                      "dev_selection": old}
        part["primary"] = {**part.get("primary", {}), "bbq": PRIMARY["bbq"]}
    return report


def _convert_part(part: Mapping[str, Any], items: BBQItems, questions: Mapping[str, Sequence[MCQuestion]]
                  ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], dict[str, Any] | None, str]:
    """:func:`convert_bbq_primary`'s new values for one part: per method entry its BBQ fields and mean, the
    constant's, and the part's old BBQ primary; every stored value checked first."""
    old, tasks = primary_of(part, "bbq"), list(part["tasks"])
    w_old = np.asarray(bbq_item_weights(items.condition, old))
    w_new = np.asarray(bbq_item_weights(items.condition, PRIMARY["bbq"]))
    dis = np.asarray(items.condition) == "disambig"
    entries = []
    for name, entry in part["methods"].items():
        bbq = entry["test"]["bbq"]
        correct = bbq_correct(entry, items, old)
        if not np.allclose(correct * w_old[None, :], np.asarray(bbq["per_item"], dtype=np.float64), atol=1e-9):
            raise DataError(f"{name}: BBQ per_item is not its correctness times the {old} weights.")
        _check_close(f"{name} BBQ disambig", float(correct[:, dis].mean()), bbq["disambig"])
        _check_close(f"{name} BBQ ambig", float(correct[:, ~dis].mean()), bbq["ambig"])
        _check_close(f"{name} mean", float(np.mean(_seed_means(entry, tasks))), entry["test"]["mean"])
        new: dict[str, Any] = {"per_item": (correct * w_new[None, :]).tolist()}
        if "answers" not in bbq:
            new["correct"] = ["".join("1" if x else "0" for x in row) for row in correct]
        rescored = {**entry["test"], "bbq": {**bbq, **new}}
        entries.append((entry, {"bbq": new, "mean": mean_std_or_none(_seed_means({"test": rescored}, tasks))}))
    constant = None
    const = part.get("reference", {}).get("constant")
    if const is not None:
        test = {**const["test"], "bbq": summarise_seeds([{"bbq": constant_row("bbq", questions["bbq"]), "mean": 0.0,
                                                          "side_effects": {}}])["bbq"]}
        _check_close("the constant's mean", float(np.mean(_seed_means(const, tasks))), const["test"]["mean"])
        constant = {"bbq": test["bbq"], "mean": mean_std_or_none(_seed_means({"test": test}, tasks))}
    return entries, constant, old


def rescore_bbq_primary(results_dir: str | Path, n_boot: int | None = None) -> dict[str, Any]:
    """:func:`convert_bbq_primary` on the comparison in ``results_dir`` (test questions from its ``config``; no
    model), then every interval, detectable difference, Holm's correction and BBQ's guard recomputed (the config's
    ``n_boot`` unless given; each protocol part's too), and ``eval.json`` and ``eval.md`` rewritten."""
    path = Path(results_dir) / "eval.json"
    report = read_json(path, "comparison results")
    questions = _test_questions(report)
    convert_bbq_primary(report, questions)
    n = n_boot or int(report["config"]["n_boot"])
    for part in (report, *report.get("protocols", {}).values()):
        add_question_facts(part, questions)
        add_statistics(part, part["tasks"], part["probes"], n)
    write_report(report, Path(results_dir))
    return report
