"""Choosing a method's setting on dev: the best dev mean among the settings whose side effect is within a budget,
on a grid that grows past its edge when the best value sits there.

A *trial* is one dev evaluation: ``{"params": {...}, "dev_mean": float, "dev_kl": float | None, ...}``; its
*scale* is the one run-time value that sets how hard a method pushes (the multiplier, ITI's α, the softmax
temperature). Pure functions: :class:`matsteer.eval.experiment.Experiment` runs the trials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matsteer.errors import ConfigError

#: The parameter that sets a method's strength, in the order looked for; grids extend along it.
SCALE_KEYS = ("multiplier", "alpha", "temperature")


def scale_key(params: Mapping[str, Any]) -> str | None:
    """The strength parameter among ``params`` (None: the method has none, e.g. no steering, ICL's shots)."""
    return next((k for k in SCALE_KEYS if k in params), None)


def within_budget(trial: Mapping[str, Any], kl_budget: float | None) -> bool:
    """True when the trial's neutral-text KL is at most ``kl_budget`` (always without a budget, and for methods
    whose KL is undefined: they change no next-token distribution of neutral text)."""
    kl = trial.get("dev_kl")
    return kl_budget is None or kl is None or kl <= kl_budget


def select_trial(trials: Sequence[Mapping[str, Any]], kl_budget: float | None = None) -> int:
    """The index of the trial with the best dev mean among those within the KL budget (ties: the first). When
    none is within it, the trial with the smallest KL (the closest the method comes to the budget)."""
    if not trials:
        raise ValueError("select_trial needs at least one trial.")
    ok = [i for i, t in enumerate(trials) if within_budget(t, kl_budget)]
    if ok:
        return max(ok, key=lambda i: (trials[i]["dev_mean"], -i))
    return min(range(len(trials)), key=lambda i: (trials[i]["dev_kl"], i))


def finalists(trials: Sequence[Mapping[str, Any]], keep: int, kl_budget: float | None = None) -> list[int]:
    """The indices of the ``keep`` trials a successive-halving search re-scores on the whole dev set: those within
    the KL budget first, then by dev mean (ties: the earlier), in grid order. With no trial within the budget,
    the ``keep`` of least KL (what :func:`select_trial` would fall back to)."""
    if keep < 1:
        raise ValueError(f"finalists needs keep >= 1, got {keep}.")
    ok = [i for i, t in enumerate(trials) if within_budget(t, kl_budget)]
    if ok:
        ranked = sorted(ok, key=lambda i: (-trials[i]["dev_mean"], i))
    else:
        ranked = sorted(range(len(trials)), key=lambda i: (trials[i]["dev_kl"], i))
    return sorted(ranked[:keep])


def _others(params: Mapping[str, Any], key: str) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in params.items() if k != key))


def edge_extension(trials: Sequence[Mapping[str, Any]], best: int, factor: float = 2.0) -> dict[str, Any] | None:
    """The next setting to try when the chosen trial's scale is the largest (or smallest) value tried among the
    trials that share its other parameters: that value times (or divided by) ``factor``. None when the choice is
    inside the grid (a larger value tried but over the KL budget counts as inside: the budget bounds it), has no
    scale, or the grid has one value only (a fixed setting, not a search)."""
    params = trials[best]["params"]
    key = scale_key(params)
    if key is None:
        return None
    same = [t for t in trials if scale_key(t["params"]) == key and _others(t["params"], key) == _others(params, key)]
    values = sorted({float(t["params"][key]) for t in same})
    if len(values) < 2:
        return None  # a one-value grid is a fixed setting, not a search
    value = float(params[key])
    if value == values[-1]:
        return {**params, key: value * factor}
    if value == values[0]:
        return {**params, key: value / factor}
    return None


def at_edge(trials: Sequence[Mapping[str, Any]], best: int) -> bool:
    """True when :func:`edge_extension` would still extend the grid past the chosen trial (a choice left at an
    edge once the extensions allowed ran out; ``eval.md`` flags it)."""
    return edge_extension(trials, best) is not None


def _trial_positions(trial: Mapping[str, Any], default: str) -> str:
    return str(trial["params"].get("positions", default))


def borrowed_choices(report: Mapping[str, Any], protocol: str) -> dict[str, dict[str, Any]]:
    """The settings a finished comparison (``report``: its ``eval.json``) chose on dev under ``protocol`` (a
    position policy), per method: ``{name: {"chosen": params, "dev_trials": [...]}}``, plus ``"training_default"``
    (MAT-Steer's training overrides, ``{"overrides": {...}}``). A run that borrows them skips its own dev search.

    A report with one table per protocol gives that protocol's table; an older one that chose the positions on dev
    within one table (``position_grid``) gives, per method, its trials under ``protocol`` alone, re-selected by
    :func:`select_trial` with the report's own KL budget (methods that steer no tokens keep their choice). Raises
    ConfigError when the report scored neither that protocol nor a grid that holds it."""
    cfg = report.get("config", {})
    if report.get("protocol") == protocol or (not cfg.get("protocols") and not cfg.get("position_grid")
                                                and cfg.get("positions") == protocol):
        selection = report["selection"]
    elif protocol in report.get("protocols", {}):
        selection = report["protocols"][protocol]["selection"]
    elif protocol in cfg.get("position_grid", ()):
        selection = report["selection"]
    else:
        raise ConfigError(f"The comparison to borrow settings from never scored the {protocol!r} protocol; borrow "
                          "from one that did, or tune on dev (leave settings_from unset).")
    default = str(cfg.get("positions", protocol))
    out: dict[str, dict[str, Any]] = {}
    for name, record in selection.items():
        if name == "training_default":
            out[name] = {"overrides": dict(record["chosen"]["overrides"])}
            continue
        trials = [t for t in record["dev_trials"] if _trial_positions(t, default) == protocol]
        if not any("positions" in t["params"] for t in record["dev_trials"]) or not trials:
            trials = list(record["dev_trials"])  # steers no tokens: its choice holds under every protocol
        out[name] = {"chosen": dict(trials[select_trial(trials, cfg.get("kl_budget"))]["params"]),
                     "dev_trials": trials}
    return out
