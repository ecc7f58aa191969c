"""Tables as figures: methods x tasks (Table 1 style, from scores or an evaluation report) and the ParaDetox gate
table (Table 2), and :func:`method_table_from_report`, the plain table of a report's scores."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from matsteer.errors import ConfigError
from matsteer.viz.style import PALETTE, score_mean_std, style

__all__ = ["PRIMARY_METRICS", "method_table_from_report", "plot_gate_table", "plot_method_table"]

# Metric picked from a task entry that holds several metrics (an evaluation report's test[task]), in order.
PRIMARY_METRICS: tuple[str, ...] = ("mc2", "accuracy", "acc", "score", "win_rate")


def method_table_from_report(
    report: Mapping[str, Any],
    split: str = "test",
    tasks: Sequence[str] | None = None,
    primary: Mapping[str, str] | None = None,
    scale: float = 1.0,
) -> dict[str, dict[str, tuple[float, float | None]]]:
    """``{method label: {task: (mean, std)}}`` from an evaluation report (``report["methods"][m][split][task]``).

    A task entry may be a score itself (``{"mean", "std"}``, a pair, a number) or a dict of metrics
    (``{"mc2": {"mean", "std"}, "mc1": ..., "n": ...}``); then ``primary[task]`` names the metric, else the first of
    :data:`PRIMARY_METRICS` present. Entries without a score (``side_effects``, ``n``, notes) are skipped.
    ``scale=100`` turns fractions into percentages. Methods are labelled by their ``label`` entry when present.
    """
    methods = report.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise ConfigError("The report has no 'methods' entry; pass the dict run_evaluation returned (or eval.json).")
    primary = dict(primary or {})
    table: dict[str, dict[str, tuple[float, float | None]]] = {}
    for name, entry in methods.items():
        scores = entry.get(split) if isinstance(entry, Mapping) else None
        if not isinstance(scores, Mapping):
            continue
        row = {}
        for task, value in scores.items():
            if tasks is not None and task not in tasks:
                continue
            if isinstance(value, Mapping) and "mean" not in value:
                metric = primary.get(task) or next((k for k in PRIMARY_METRICS if k in value), None)
                if metric is None or metric not in value:
                    continue
                value = value[metric]
            try:
                m, sd = score_mean_std(value)
            except (ConfigError, TypeError, ValueError):
                continue  # a non-score entry (e.g. a note) in the report
            row[task] = (m * scale, None if sd is None else sd * scale)
        if row:
            label = entry.get("label") if isinstance(entry.get("label"), str) else name
            table[label] = row
    if not table:
        raise ConfigError(f"No method in the report has scores for split {split!r}.")
    return table


def _format_cell(value: Any, digits: int) -> str:
    if isinstance(value, str):
        return value
    m, sd = score_mean_std(value)
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if sd is None else f"{m:.{digits}f} ± {sd:.{digits}f}"


def _table_figure(cells: list[list[str]], rows: list[str], cols: list[str], title: str,
                  colors: list[list[Any]] | None = None, bold: set[tuple[int, int]] | None = None) -> Figure:
    """A figure holding only a table (rows x cols of strings)."""
    width = max(4.0, 1.6 + 0.11 * max(len(r) for r in rows) + sum(max(10, 0.9 * max(len(c), *(len(cells[i][j])
                for i in range(len(rows))))) * 0.09 for j, c in enumerate(cols)))
    with style():
        fig = Figure(figsize=(width, 0.5 + 0.3 * (len(rows) + 1)), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        table = ax.table(cellText=cells, rowLabels=rows, colLabels=cols, cellColours=colors, loc="upper center",
                         cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1.0, 1.35)
        for (r, c), cell in table.get_celld().items():
            cell.set_edgecolor("0.8")
            if r == 0 or c == -1:
                cell.set_text_props(fontweight="bold")
                cell.set_facecolor("#eef0f4")
            if bold and r > 0 and (r - 1, c) in bold:
                cell.set_text_props(fontweight="bold")
        ax.set_title(title, fontweight="bold", fontsize=11)
    return fig


def plot_gate_table(table: Mapping[str, Mapping[str, Any]], *, title: str = "ParaDetox gate analysis",
                    digits: int = 2) -> Figure:
    """Table 2 rendered as a figure: ``{metric: {group: value}}`` (see :func:`matsteer.eval.gate_analysis.gate_table_stats`)."""
    if not table:
        raise ConfigError("plot_gate_table needs at least one row.")
    rows = list(table)
    cols = list(dict.fromkeys(g for r in table.values() for g in r))
    cells = [[_format_cell(table[r].get(c, "–"), digits) for c in cols] for r in rows]
    return _table_figure(cells, rows, cols, title)


def plot_method_table(
    table: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "Method comparison (mean ± std)",
    digits: int = 2,
    higher_is_better: bool = True,
) -> Figure:
    """Methods x tasks as a table figure (Table 1 style): cells ``mean ± std``, shaded by rank, best in bold.

    table: ``{method: {task: score}}`` with numbers, ``(mean, std)`` or ``{"mean", "std"}``
    (see :func:`method_table_from_report`); or an evaluation report with a ``"methods"`` entry.
    """
    if "methods" in table and isinstance(table["methods"], Mapping):
        table = method_table_from_report(table)
    if not table:
        raise ConfigError("plot_method_table needs at least one method.")
    rows = list(table)
    cols = list(dict.fromkeys(t for r in table.values() for t in r))
    means = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if c in table[r]:
                means[i, j] = score_mean_std(table[r][c])[0]
    cells = [[_format_cell(table[r][c], digits) if c in table[r] else "–" for c in cols] for r in rows]
    cmap = sns.light_palette(PALETTE[2], as_cmap=True)
    colors, bold = [], set()
    for j in range(len(cols)):
        col = means[:, j]
        if np.isfinite(col).any():
            best = np.nanargmax(col) if higher_is_better else np.nanargmin(col)
            bold.add((int(best), j))
    for i in range(len(rows)):
        row_colors = []
        for j in range(len(cols)):
            col = means[:, j]
            finite = col[np.isfinite(col)]
            if not np.isfinite(means[i, j]) or finite.max() == finite.min():
                row_colors.append("white")
                continue
            frac = (means[i, j] - finite.min()) / (finite.max() - finite.min())
            row_colors.append(cmap(0.1 + 0.6 * (frac if higher_is_better else 1 - frac)))
        colors.append(row_colors)
    return _table_figure(cells, rows, cols, title, colors=colors, bold=bold)
