"""The summary at the end of a headless run: the method comparison as a short table, the output folders, the time."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matsteer.app.parameters import notebook_parameters
from matsteer.app.paths import display_path, resolve_path
from matsteer.app.timings import NotebookRun, format_clock
from matsteer.eval.report import in_table_order
from matsteer.eval.tasks import LEGACY_PRIMARY

__all__ = ["comparison_summary"]

#: Preferred primary metric of a task neither the report nor :data:`~matsteer.eval.tasks.LEGACY_PRIMARY` names
#: (first found wins). A report that names none predates the ``primary`` record: its tasks' primaries are the
#: legacy ones (BBQ: ``balanced``); a newer one names its own (BBQ: ``disambig``, since 2026-12-04).
_PRIMARY_METRICS = ("mc2", "preference", "disambig", "balanced", "balanced_accuracy", "accuracy")

# One row of the short table: its label and {column: value, None when missing}.
_Row = tuple[str, dict[str, float | None]]


def _number(value: Any) -> float | None:
    """A finite number from ``value`` or from its ``"mean"`` entry; None otherwise."""
    if isinstance(value, Mapping):
        value = value.get("mean")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _primary(task: str, scores: Mapping[str, Any], hints: Mapping[str, Any]) -> tuple[str, float | None]:
    """The metric shown for a task: the report's own choice if it names one, else the first known metric."""
    hint = hints.get(task)
    names = ([hint] if isinstance(hint, str) else []) + list(_PRIMARY_METRICS)
    names += [k for k, v in scores.items() if _number(v) is not None and k != "n"]
    for name in names:
        if name in scores and _number(scores[name]) is not None:
            return name, _number(scores[name])
    return "", None


def _test_row(test: Mapping[str, Any], hints: Mapping[str, Any], columns: list[str]) -> dict[str, float | None]:
    """One entry's ``test`` scores as {column: value}: each task's primary metric, the mean and the KL.

    Columns met for the first time are appended to ``columns`` (in place), so the table keeps the report's order.
    """
    row: dict[str, float | None] = {}
    for task, scores in test.items():
        if task in ("mean", "side_effects") or not isinstance(scores, Mapping):
            continue
        metric, value = _primary(str(task), scores, hints)
        column = f"{task} {metric}".strip()
        if column not in columns:
            columns.append(column)
        row[column] = value
    row["mean"] = _number(test.get("mean"))
    side = test.get("side_effects")
    row["KL"] = _number(side.get("kl")) if isinstance(side, Mapping) else None
    return row


def _comparison_rows(report: Any) -> tuple[list[str], list[_Row]]:
    """(columns, rows) of a comparison report, read defensively: any top-level mapping of entries that carry a
    ``test`` mapping counts as rows (the methods, and any reference or control rows kept beside them)."""
    if not isinstance(report, Mapping):
        return [], []
    primary = report.get("primary")
    hints: Mapping[str, Any] = primary if isinstance(primary, Mapping) else LEGACY_PRIMARY
    columns: list[str] = []
    rows: list[_Row] = []

    groups = [report.get("methods")] + [v for k, v in report.items() if k != "methods"]
    for group in groups:
        if not isinstance(group, Mapping):
            continue
        for key, entry in in_table_order(group):  # eval.json keys are sorted; show the comparison's order
            test = entry.get("test") if isinstance(entry, Mapping) else None
            if not isinstance(test, Mapping):
                continue
            rows.append((str(entry.get("label") or key), _test_row(test, hints, columns)))
    return (columns + ["mean", "KL"] if rows else []), rows


def _format_table(columns: Sequence[str], rows: Sequence[tuple[str, Mapping[str, float | None]]]) -> str:
    """The rows as aligned text: scores in %, one decimal; KL in nats, three; ``-`` where missing."""
    def cell(column: str, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if column == "KL" else f"{value * 100:.1f}"

    width = max(len("method"), *(len(label) for label, _ in rows))
    widths = [max(len(c), 5) for c in columns]
    lines = ["  " + "method".ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    for label, row in rows:
        lines.append("  " + label.ljust(width) + "  "
                     + "  ".join(cell(c, row.get(c)).rjust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


def _first_markdown_table(text: str) -> str | None:
    """The first run of ``|``-lines in ``text``; None if there is none."""
    lines, found = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            lines.append(line)
            found = True
        elif found:
            break
    return "\n".join(lines) if lines else None


def comparison_summary(results_dir: str | Path) -> str | None:
    """The comparison as a short table (test %, primary metric per task, mean, KL) from ``eval.json``, else the
    first table of ``eval.md``; None if neither holds one. Unknown or missing fields are skipped, not fatal."""
    folder = Path(results_dir)
    try:
        columns, rows = _comparison_rows(json.loads((folder / "eval.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        columns, rows = [], []
    if rows:
        return _format_table(columns, rows)
    try:
        return _first_markdown_table((folder / "eval.md").read_text(encoding="utf-8"))
    except OSError:
        return None


def output_folders(parameters: Mapping[str, Any], paths: Sequence[Path]) -> dict[str, Path]:
    """The output folders of a run: each ``*_dir`` parameter as given, else the first notebook default."""
    found: dict[str, Path] = {}
    for name in ("features_dir", "steerer_dir", "figures_dir", "results_dir"):
        value = parameters.get(name)
        if value is None:
            for path in paths:
                declared = notebook_parameters(path)
                if name in declared:
                    value = declared[name].default
                    break
        if value is not None:
            found[name] = resolve_path(value)
    return found


def run_summary(runs: Sequence[NotebookRun], folders: Mapping[str, Path], out_dir: Path, seconds: float) -> str:
    """The closing lines of a run: notebooks and wall time, the comparison table, where the outputs are."""
    lines = ["", f"Done: {len(runs)} notebook(s) in {format_clock(seconds)} wall time."]
    results = folders.get("results_dir")
    table = comparison_summary(results) if results is not None else None
    if table and results is not None:
        lines += ["", f"Method comparison (test, %; KL in nats; full table with intervals: "
                      f"{display_path(results / 'eval.md')}):", table]
    lines += ["", f"  executed notebooks  {display_path(out_dir)}/"]
    where = {"figures_dir": "figures", "steerer_dir": "steerer", "results_dir": "tables (eval.json, eval.md)",
             "features_dir": "features"}
    for key, label in where.items():
        if key in folders and folders[key].exists():
            lines.append(f"  {label:<18}  {display_path(folders[key])}/")
    return "\n".join(lines)
