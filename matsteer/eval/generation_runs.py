"""Generation measures run for the methods of a finished comparison (the toxicity continuations, TruthfulQA's
open-ended answers): each method at the setting that comparison chose on dev under this run's protocol
(:func:`~matsteer.eval.selection.borrowed_choices`), seeded methods over the seeds, no steering as the reference;
a later run can add methods to a saved report on the same items.

The measure itself is a ``score(method) -> dict`` with ``per_item`` (the per-item primary); these helpers do the
rest the same way for every measure: which methods, the seeds, mean ± std over seeds, the cluster bootstrap of each
method minus no steering (seeds paired), and the additions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matsteer.errors import ConfigError
from matsteer.eval.config import METHODS, SEEDED, EvalConfig
from matsteer.eval.evaluator import Method
from matsteer.eval.experiment import Experiment
from matsteer.eval.selection import borrowed_choices
from matsteer.eval.stats import cluster_bootstrap, mean_std
from matsteer.files import read_json


@dataclass
class ChosenMethods:
    """The methods a run scores and the settings the comparison chose for them."""

    eval_json: str
    names: list[str]
    params: dict[str, dict[str, Any]]
    overrides: dict[str, Any]  # MAT-Steer's training setting


def chosen_methods(cfg: EvalConfig, eval_json: str | Path, methods: Sequence[str] | None, skip: frozenset[str],
                   base: Mapping[str, Any] | None = None, what: str = "generation") -> ChosenMethods:
    """Which methods to score (default: every method of the comparison but ``skip``) at which setting, checked:
    each must have a dev choice in ``eval_json``; no steering must be among them unless they are added to
    ``base`` (a saved report of the same measure), which must come from the same comparison and hold none of them."""
    chosen = borrowed_choices(read_json(Path(eval_json), "comparison results"), cfg.positions)
    names = list(methods or [m for m in METHODS if m in chosen and m not in skip])
    missing = [m for m in names if m not in chosen]
    if missing or ("none" not in names and base is None):
        raise ConfigError(f"{eval_json} has no dev choice for {missing or ['none']}; the {what} run scores methods "
                          "the comparison chose for, no steering among them.")
    if base is not None and (set(names) & set(base["runs"]) or base["config"]["eval_json"] != str(eval_json)):
        raise ConfigError(f"Cannot add {names} to this {what} report: give new methods only, scored from the same "
                          "comparison file it was run from.")
    return ChosenMethods(str(eval_json), names, {n: dict(chosen[n]["chosen"]) for n in names},
                         dict(chosen["training_default"]["overrides"]))


def score_methods(ex: Experiment, picked: ChosenMethods, score: Callable[[Method], dict[str, Any]],
                  step: Callable[[str], None], what: str = "generation") -> dict[str, list[dict[str, Any]]]:
    """``{name: [{"seed", **score(method)} per seed]}``: seeded methods once per seed of ``ex.cfg``, the others
    once."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in picked.names:
        for seed in (ex.cfg.seeds if name in SEEDED else ex.cfg.seeds[:1]):
            step(f"{what}: {name} (seed {seed})")
            method = ex.method(name, dict(picked.params[name]), seed, dict(picked.overrides))
            runs.setdefault(name, []).append({"seed": seed, **score(method)})
    return runs


def with_addition(base: dict[str, Any] | None, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` itself, or ``base`` with ``report``'s runs and settings added and its provenance recorded under
    ``additions``."""
    if base is None:
        return report
    base["runs"].update(report["runs"])
    base["params"].update(report["params"])
    base.setdefault("additions", []).append({"methods": list(report["runs"]), "seeds": report["config"]["seeds"],
                                             "provenance": report["provenance"]})
    return base


def add_run_statistics(report: dict[str, Any], metrics: Sequence[str], clusters: Sequence[str]) -> None:
    """Into a report with ``runs``: ``summary`` (per method, mean ± std over seeds of each of ``metrics``) and
    ``vs_none`` (the cluster bootstrap of each method's per-item primary minus no steering's, seeds paired)."""
    runs = report["runs"]
    report["summary"] = {n: {k: asdict(mean_std([r[k] for r in rs])) for k in metrics} for n, rs in runs.items()}
    report["vs_none"] = {n: asdict(cluster_bootstrap([r["per_item"] for r in rs], [r["per_item"] for r in runs["none"]],
                                                     list(clusters), report["config"]["n_boot"]))
                         for n, rs in runs.items() if n != "none"}


def table_order(names: Sequence[str]) -> list[str]:
    """``names`` in the comparison's table order (unknown names last, sorted)."""
    return [n for n in (*METHODS, *sorted(set(names) - set(METHODS))) if n in names]
