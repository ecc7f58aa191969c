"""Adding methods to a finished comparison (``eval.json``) without re-running it: the new methods are chosen by
the same dev rule on the same dev questions, scored on the same test questions and seeds, and every interval is
recomputed; each addition records its own commit, dtype and machine in ``report["additions"]``.

No steering is re-scored beside them as a check: its per-question test scores are compared with the committed
row's (``agreement``), so a change of machine or kernels that moved the unsteered model is visible, not hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from matsteer.activations.models import cpu_has_native_bf16
from matsteer.data import load_mc_questions
from matsteer.errors import ConfigError
from matsteer.eval.comparison import add_question_facts, add_statistics, method_entry
from matsteer.eval.config import METHODS, EvalConfig
from matsteer.eval.experiment import Experiment, ignore_step, provenance
from matsteer.eval.report import write_report
from matsteer.eval.tasks import for_task, parse_sources
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
    """Add ``names`` (methods of :data:`METHODS` not yet in it) to the comparison in ``results_dir``, run with
    ``cfg``; rewrite its ``eval.json`` and ``eval.md``. Returns the updated report. ``cfg.seeds`` may be fewer
    than the comparison's (a costly method scored on its first seeds only; each row records its seeds)."""
    step = on_step or ignore_step
    path = Path(results_dir) / "eval.json"
    report = read_json(path, "comparison results")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    present = [n for n in names if n in report["methods"]]
    if present:
        raise ConfigError(f"{present} are in {path} already. Fix: re-run the whole comparison to replace them.")
    check_same_footing(cfg, report["config"])
    step("comparison: set-up for the added methods (model, dev and test questions)")
    ex = Experiment(cfg, progress, on_step)
    overrides = report["selection"]["training_default"]["chosen"]["overrides"]
    for name in names:
        chosen, trials = ex.tune(name, cfg.seeds[0], overrides)
        report["selection"][name] = {"chosen": chosen, "dev_trials": trials}
        report["methods"][name] = method_entry(ex, name, chosen, overrides, step)
    step("comparison: test: none (the check against the committed row)")
    none = ex.test_result(ex.method("none", {}, cfg.seeds[0]))
    check = {t: agreement(none[t]["per_item"], report["methods"]["none"]["test"][t]["per_item"][0])
             for t in ex.test.all_tasks}
    add_question_facts(report, ex.test.questions)
    add_statistics(report, ex.test.tasks, ex.test.probes, cfg.n_boot)
    record = {"methods": list(names), "provenance": provenance(ex), "cpu_model": cpu_model(),
              "cpu_native_bf16": cpu_has_native_bf16(), "torch_threads": torch.get_num_threads(),
              "none_rescored": check, "timings": ex.timings}
    report.setdefault("additions", []).append(record)
    write_report(report, Path(results_dir))
    return report


def refresh_statistics(results_dir: str | Path, n_boot: int | None = None) -> dict[str, Any]:
    """Recompute every interval, the detectable differences, Holm's correction and BBQ's guard of the comparison
    in ``results_dir`` with the statistics of this version (clusters and BBQ facts from the test questions its
    ``config`` names; no model runs), and rewrite its ``eval.json`` and ``eval.md``."""
    path = Path(results_dir) / "eval.json"
    report = read_json(path, "comparison results")
    cfg = report["config"]
    questions = {t: load_mc_questions(t, "test", limit=for_task(cfg["test_limits"], t),
                                      source=for_task(parse_sources(cfg.get("sources")), t))
                 for t in (*report["tasks"], *report["probes"])}
    add_question_facts(report, questions)
    add_statistics(report, report["tasks"], report["probes"], n_boot or int(cfg["n_boot"]))
    write_report(report, Path(results_dir))
    return report
