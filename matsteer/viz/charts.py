"""Charts of scores: grouped bars of ablation rows (Table 3 / Table 4 style), curves against the fraction of
training data (Fig. 4) and the number of attributes (Fig. 7), and accuracy and KL against a multiplier.

Scores may be numbers, ``(mean, std)`` pairs or ``{"mean", "std"}`` dicts; a std becomes an error bar or band."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from matsteer.errors import ConfigError
from matsteer.eval.gate_analysis import as_array
from matsteer.viz.style import attribute_colors, new_figure, score_mean_std, style

__all__ = ["plot_ablation", "plot_data_efficiency", "plot_multiplier_sweep", "plot_num_attributes"]


def plot_multiplier_sweep(sweep: Mapping[str, Mapping[str, Any]], *, xlabel: str = "multiplier m_t") -> Figure:
    """Accuracy and KL against a multiplier, per swept attribute.

    sweep: ``{attribute: {"multipliers": [k], "accuracy": [k] or {task: [k]}, "kl": [k] (optional)}}``.
    Left panel accuracy (one line per attribute, or per attribute x task), right panel KL to the base model.
    """
    if not sweep:
        raise ConfigError("plot_multiplier_sweep needs at least one attribute.")
    colors = attribute_colors(list(sweep))
    styles = ["-", "--", ":", "-."]
    has_kl = any("kl" in v for v in sweep.values())
    with style():
        fig, axes = new_figure(1, 2 if has_kl else 1, width=4.6, height=3.4)
        acc_ax = axes[0, 0]
        for attr, entry in sweep.items():
            x = as_array(entry["multipliers"], f"{attr}/multipliers", 1)
            acc = entry.get("accuracy", {})
            series = acc if isinstance(acc, Mapping) else {None: acc}
            for i, (task, ys) in enumerate(series.items()):
                y = as_array(ys, f"{attr}/accuracy", 1)
                label = attr if task is None else f"{attr}: {task}"
                acc_ax.plot(x, y, styles[i % len(styles)], marker="o", color=colors[attr], label=label)
            if has_kl and "kl" in entry:
                axes[0, 1].plot(x, as_array(entry["kl"], f"{attr}/kl", 1), marker="s", color=colors[attr], label=attr)
        acc_ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        acc_ax.set_xlabel(xlabel)
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_title("Accuracy vs multiplier")
        acc_ax.legend()
        if has_kl:
            kl_ax = axes[0, 1]
            kl_ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
            kl_ax.set_xlabel(xlabel)
            kl_ax.set_ylabel("KL(base ‖ steered), nats/token")
            kl_ax.set_title("Side effect on neutral text")
            kl_ax.legend()
    return fig


def plot_ablation(
    results: Mapping[str, Mapping[str, Any]],
    *,
    ylabel: str = "score",
    title: str = "Ablation",
    baseline: str | None = None,
    annotate: bool = True,
) -> Figure:
    """Grouped bars, Table 3 / Table 4 style: ``{setting: {task: score}}``; a score may carry a std for error bars.

    Scores: numbers, ``(mean, std)`` pairs or ``{"mean", "std"}`` dicts. ``baseline`` names a setting drawn as a
    dotted reference line per task (e.g. "Base").
    """
    if not results:
        raise ConfigError("plot_ablation needs at least one setting.")
    settings = list(results)
    tasks = list(dict.fromkeys(task for row in results.values() for task in row))
    width = 0.8 / max(1, len(tasks))
    palette = sns.color_palette("deep", len(tasks))
    with style():
        fig, axes = new_figure(width=max(4.5, 0.75 * len(settings) * max(1, len(tasks)) ** 0.5 + 2), height=3.8)
        ax = axes[0, 0]
        x = np.arange(len(settings))
        lo = math.inf
        for j, task in enumerate(tasks):
            means, stds = [], []
            for s in settings:
                m, sd = score_mean_std(results[s][task]) if task in results[s] else (math.nan, None)
                means.append(m)
                stds.append(0.0 if sd is None else sd)
            means_arr = np.array(means)
            lo = min(lo, np.nanmin(means_arr - np.array(stds)) if np.isfinite(means_arr).any() else lo)
            err = np.array(stds) if any(stds) else None
            bars = ax.bar(x + (j - (len(tasks) - 1) / 2) * width, means_arr, width * 0.95, yerr=err, capsize=3,
                          color=palette[j], label=task, edgecolor="white")
            if annotate:
                ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
            if baseline is not None and task in results.get(baseline, {}):
                ax.axhline(score_mean_std(results[baseline][task])[0], color=palette[j], linestyle=":", linewidth=1)
        if math.isfinite(lo):
            bottom, top = ax.get_ylim()
            bottom = max(0.0, lo - 0.1 * (top - lo))  # zoom in: differences are often a few points
            ax.set_ylim(bottom, top + 0.08 * (top - bottom))  # room for the value labels
        ax.set_xticks(x, settings, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if len(tasks) > 1:
            fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
    return fig


def _curve_axis(curves: Mapping[str, Mapping[Any, Any]], ax: Axes, marker: str = "o") -> None:
    """One line per curve ``{name: {x: score}}`` on ``ax``, x sorted, a band where scores carry a std."""
    palette = sns.color_palette("deep", len(curves))
    for i, (name, points) in enumerate(curves.items()):
        xs = sorted(points, key=float)
        x = np.array([float(v) for v in xs])
        ms = [score_mean_std(points[v]) for v in xs]
        y = np.array([m for m, _ in ms])
        sd = np.array([0.0 if s is None else s for _, s in ms])
        ax.plot(x, y, marker=marker, color=palette[i], label=name, linewidth=2 if i == 0 else 1.4)
        if sd.any():
            ax.fill_between(x, y - sd, y + sd, color=palette[i], alpha=0.15, linewidth=0)


def plot_data_efficiency(
    curves: Mapping[str, Mapping[float, Any]],
    *,
    reference: Mapping[str, float] | None = None,
    ylabel: str = "accuracy",
    title: str = "Data efficiency",
) -> Figure:
    """Score against the fraction of training data (Fig. 4): ``{method: {fraction in (0, 1]: score}}``.

    reference: horizontal lines, e.g. ``{"SFT (100%)": 54.12}``. Scores may carry a std (shaded band).
    """
    if not curves:
        raise ConfigError("plot_data_efficiency needs at least one method.")
    with style():
        fig, axes = new_figure(width=5.2, height=3.6)
        ax = axes[0, 0]
        _curve_axis(curves, ax)
        for i, (name, value) in enumerate((reference or {}).items()):
            ax.axhline(float(value), color="0.4", linestyle=["--", ":", "-."][i % 3], linewidth=1, label=name)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(xmax=1.0))
        ax.set_xlabel("fraction of training data")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
    return fig


def plot_num_attributes(
    curves: Mapping[str, Mapping[int, Any]],
    *,
    chance: float | None = 50.0,
    ylabel: str = "MAT-Steer win rate (%)",
    title: str = "Number of attributes",
) -> Figure:
    """Score against the number of steered attributes (Fig. 7): ``{baseline or method: {n_attributes: score}}``.

    chance: a dotted reference line (50% win rate), or None.
    """
    if not curves:
        raise ConfigError("plot_num_attributes needs at least one curve.")
    with style():
        fig, axes = new_figure(width=5.0, height=3.6)
        ax = axes[0, 0]
        _curve_axis(curves, ax, marker="s")
        if chance is not None:
            ax.axhline(chance, color="0.4", linestyle=":", linewidth=1.2)
        ns = sorted({int(n) for pts in curves.values() for n in pts})
        ax.set_xticks(ns)
        ax.set_xlabel("number of attributes")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(title="vs." if chance is not None else None)
    return fig


def plot_targeting_frontier(curves: Mapping[str, list[Mapping[str, Any]]], *, kl_budget: float | None = None,
                            chosen: Mapping[str, float] | None = None, none: float | None = None) -> Figure:
    """Dev mean against neutral-text KL, one curve per gate variant, a point per multiplier (labelled).

    curves: ``{variant: [{"multiplier", "dev_mean", "dev_kl"}]}`` (:func:`matsteer.eval.ablations.frontier`, means
    as fractions; drawn as %). ``kl_budget``: a dotted vertical line; ``chosen``: each variant's chosen multiplier,
    ringed; ``none``: no steering's dev mean, a dotted horizontal line.
    """
    if not curves:
        raise ConfigError("plot_targeting_frontier needs at least one curve.")
    colors = sns.color_palette("deep", len(curves))
    with style():
        fig, axes = new_figure(width=5.4, height=3.8)
        ax = axes[0, 0]
        for color, (name, pts) in zip(colors, curves.items()):
            kl = np.array([p["dev_kl"] for p in pts], dtype=float)
            y = np.array([p["dev_mean"] for p in pts], dtype=float) * 100
            ax.plot(kl, y, marker="o", color=color, label=name)
            for p, xk, yk in zip(pts, kl, y):
                ax.annotate(f"{p['multiplier']:g}", (xk, yk), textcoords="offset points", xytext=(3, 3), fontsize=7,
                            color=color)
                if chosen is not None and chosen.get(name) == p["multiplier"]:
                    ax.plot([xk], [yk], marker="o", markersize=11, markerfacecolor="none", color=color)
        if kl_budget is not None:
            ax.axvline(kl_budget, color="0.5", linestyle=":", linewidth=1, label=f"KL budget {kl_budget:.3g}")
        if none is not None:
            ax.axhline(none * 100, color="0.3", linestyle="--", linewidth=0.8, label="no steering")
        every_kl = [p["dev_kl"] for pts in curves.values() for p in pts]
        if all(k > 0 for k in every_kl):  # KL spans decades: a log axis, else symlog from 0
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1e-3)
            ax.set_xlim(left=0)
        ax.set_xlabel("mean next-token KL on neutral text (nats)")
        ax.set_ylabel("dev mean of the task primaries (%)")
        ax.set_title("Gate variants: dev mean vs side effect (labels: multiplier)")
        ax.legend(fontsize=8)
    return fig
