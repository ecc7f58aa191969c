"""How long notebooks take: the record of an executed notebook, earlier runs' timings, estimates from them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsteer.files import write_json

__all__ = ["DEFAULT_SECONDS", "TIMINGS_FILE", "NotebookRun", "load_timings"]

#: Per-notebook wall seconds of the previous runs, per mode, kept beside the executed notebooks.
TIMINGS_FILE = "timings.json"
#: Estimates (wall seconds, 2-core machine, README) used until a run has been timed here.
DEFAULT_SECONDS: dict[str, dict[str, float]] = {
    "quick": {"01_extract_activations": 22, "02_train_steering": 9, "03_visualize_gates_and_vectors": 21,
              "04_evaluate": 120, "05_tune_multipliers": 23,
              "06_paper_figures": 12},
    "full": {"01_extract_activations": 144, "02_train_steering": 22, "03_visualize_gates_and_vectors": 26,
             "04_evaluate": 1054, "05_tune_multipliers": 59,
             "06_paper_figures": 12},
}


@dataclass
class NotebookRun:
    """One executed notebook: where it came from and went, its parameters and wall time (and each cell's)."""

    name: str
    source: Path
    output: Path
    parameters: dict[str, Any]
    seconds: float
    cell_seconds: dict[str, float] = field(default_factory=dict)  # by cell id, for the next run's estimates


def format_clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _mode(quick: bool) -> str:
    """The key of a run's mode in the timings file."""
    return "quick" if quick else "full"


def load_timings(out_dir: str | Path) -> dict[str, Any]:
    """The timings of earlier runs kept in ``out_dir`` (``{mode: {notebook: {"seconds", "cells"}}}``); ``{}`` if
    there are none or the file is unreadable (estimates then fall back to :data:`DEFAULT_SECONDS`)."""
    path = Path(out_dir) / TIMINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_timing(out_dir: Path, quick: bool, run: NotebookRun) -> None:
    """Record one notebook's wall time and cell times for the next run's estimates (atomic write)."""
    data = load_timings(out_dir)
    mode = data.get(_mode(quick))
    mode = dict(mode) if isinstance(mode, dict) else {}
    mode[run.name] = {"seconds": round(run.seconds, 1),
                      "cells": {k: round(v, 2) for k, v in run.cell_seconds.items()}}
    data[_mode(quick)] = mode
    write_json(out_dir / TIMINGS_FILE, data)


@dataclass
class Estimate:
    """What a notebook is expected to take: its total and, when timed before, each cell (by cell id)."""

    seconds: float | None
    cells: dict[str, float] = field(default_factory=dict)
    measured: bool = False


def notebook_estimates(names: Sequence[str], quick: bool, timings: Mapping[str, Any]) -> dict[str, Estimate]:
    """Each notebook's estimate: its time in the earlier ``timings`` of this mode, else :data:`DEFAULT_SECONDS`."""
    earlier = timings.get(_mode(quick))
    earlier = earlier if isinstance(earlier, Mapping) else {}
    out: dict[str, Estimate] = {}
    for name in names:
        entry = earlier.get(name)
        if isinstance(entry, Mapping) and isinstance(entry.get("seconds"), (int, float)):
            cells = entry.get("cells")
            cells = {str(k): float(v) for k, v in cells.items() if isinstance(v, (int, float))} \
                if isinstance(cells, Mapping) else {}
            out[name] = Estimate(float(entry["seconds"]), cells, measured=True)
        else:
            default = DEFAULT_SECONDS[_mode(quick)].get(name)
            out[name] = Estimate(float(default) if default is not None else None)
    return out
