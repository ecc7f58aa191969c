"""What a comparison will run, counted from its settings before it runs, and how long that takes at the unit costs a
finished comparison measured (``matsteer compare ... --plan``).

Per method: the layer-choice trials (``EvalConfig.layers``), the dev trials on the halving search's subset and on
the whole dev set (per protocol, times MAT-Steer's training candidates), and the test rows (seeds times protocols).
Edge extensions are counted at their most (``grid_extensions`` per grid), so trial counts are upper bounds. The unit
costs come from a finished comparison: its ``eval-timings.json`` divided by the trials and test rows its
``eval.json`` records, so an estimate is only as good as that run's machine is like this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsteer.errors import ConfigError
from matsteer.eval.config import (
    FINETUNED,
    LAYERED,
    PROTOCOL_FREE,
    REFT,
    SEEDED,
    EvalConfig,
    method_grid,
)
from matsteer.files import read_json

#: Methods whose grid has no strength to grow past an edge (their settings are counts or training settings).
_NO_EXTENSION = frozenset({"none", "icl", *FINETUNED, *REFT})


@dataclass(frozen=True)
class MethodPlan:
    """One method's work: trials on the dev subset (the halving search's first stage and the layer choice), on the
    whole dev set, and test rows (one per seed and protocol)."""

    name: str
    layer_trials: int
    subset_trials: int
    dev_trials: int
    test_rows: int


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per whole-dev trial and per test row, measured by a finished comparison (``source``)."""

    dev_trial_s: float
    test_row_s: float
    source: str


@dataclass(frozen=True)
class SearchPlan:
    """Every method's :class:`MethodPlan` and the share of dev a subset trial scores."""

    methods: tuple[MethodPlan, ...]
    subset_fraction: float

    def totals(self) -> dict[str, int]:
        return {f.name: sum(getattr(m, f.name) for m in self.methods)
                for f in dataclasses.fields(MethodPlan) if f.name != "name"}

    def seconds(self, costs: UnitCosts) -> float:
        """The dev and test scoring time at ``costs`` (a subset trial costs its share of a whole-dev trial;
        training and extraction are not counted)."""
        t = self.totals()
        subset = (t["layer_trials"] + t["subset_trials"]) * self.subset_fraction
        return (subset + t["dev_trials"]) * costs.dev_trial_s + t["test_rows"] * costs.test_row_s

    def table(self, costs: UnitCosts | None = None) -> str:
        """A Markdown table, a row per method and the totals, with the estimate where ``costs`` are given."""
        lines = ["| method | layer-choice trials | subset trials | whole-dev trials | test rows |", "|---|---|---|---|---|"]
        lines += [f"| {m.name} | {m.layer_trials} | {m.subset_trials} | {m.dev_trials} | {m.test_rows} |"
                  for m in self.methods]
        t = self.totals()
        lines.append(f"| **total** | {t['layer_trials']} | {t['subset_trials']} | {t['dev_trials']} | "
                     f"{t['test_rows']} |")
        lines.append("")
        lines.append(f"Trial counts are upper bounds (every edge extension counted); a subset trial scores "
                     f"{self.subset_fraction:.0%} of dev.")
        if costs is not None:
            hours = self.seconds(costs) / 3600
            lines.append(f"At {costs.dev_trial_s:.0f} s per whole-dev trial and {costs.test_row_s:.0f} s per test row "
                         f"(measured by {costs.source}): about {hours:.1f} h of scoring, training and extraction "
                         "not counted.")
        return "\n".join(lines)


def search_plan(cfg: EvalConfig) -> SearchPlan:
    """What :func:`~matsteer.eval.comparison.run_evaluation` runs under ``cfg`` (see the module docstring)."""
    cfg.validate()
    protocols = cfg.protocols or (None,)
    halving = cfg.search == "halving"
    plans = []
    for name in cfg.methods:
        per_protocol = protocols[:1] if name in PROTOCOL_FREE else protocols
        candidates = len(cfg.training_candidates) if name == "mat_steer" else 1
        subset = dev = 0
        for protocol in per_protocol:
            pcfg = cfg if protocol is None else dataclasses.replace(cfg, position_grid=(protocol,), protocols=())
            size = len(method_grid(pcfg, name))
            tried = size + (0 if name in _NO_EXTENSION else cfg.grid_extensions)
            if halving:
                subset += tried * candidates
                dev += min(cfg.halving_keep, tried) * candidates
            else:
                dev += tried * candidates
        coarse = len(method_grid(dataclasses.replace(cfg, norm_grid=(), position_grid=(), protocols=()), name))
        layer = len(cfg.layers) * coarse if cfg.layers and name in LAYERED else 0
        seeds = len(cfg.seeds) if name in SEEDED else 1
        plans.append(MethodPlan(name, layer, subset, dev, seeds * len(per_protocol)))
    return SearchPlan(tuple(plans), cfg.halving_fraction if halving else 1.0)


def measured_costs(results_dir: str | Path) -> UnitCosts:
    """The unit costs a finished comparison measured: its dev scoring time over the dev trials its ``eval.json``
    records (the whole-dev trials of every protocol; rows added later and their timings left out), its test scoring
    time over its test rows."""
    folder = Path(results_dir)
    report = read_json(folder / "eval.json", "comparison results")
    timings = read_json(folder / "eval-timings.json", "comparison timings")
    added = {m for a in report.get("additions", ()) for m in a.get("methods", ())}
    parts = [report, *report.get("protocols", {}).values()]
    trials = sum(len(rec.get("dev_trials", ())) for part in parts for name, rec in part["selection"].items()
                 if name != "training_default" and name not in added and "borrowed_from" not in rec)
    rows = sum(len(e["seeds"]) for part in parts for name, e in part["methods"].items()
               if name not in added and not (part is not report and name in PROTOCOL_FREE))
    if not trials or not rows:
        raise ConfigError(f"{folder} records no dev trials or no test rows of its own; measure costs on a comparison "
                          "that searched dev (e.g. results/reference).")
    return UnitCosts(_seconds(timings, "dev_eval_s") / trials, _seconds(timings, "test_eval_s") / rows, str(folder))


def _seconds(timings: Mapping[str, Any], key: str) -> float:
    value = timings.get(key)
    if not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"The timings have no positive {key!r}; measure costs on a finished comparison.")
    return float(value)
