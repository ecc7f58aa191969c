"""The lines a talking headless run prints: each notebook, each step inside it, each reported line, with times."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from matsteer.app.paths import display_path
from matsteer.app.steps import step_labels
from matsteer.app.timings import Estimate, NotebookRun, format_clock
from matsteer.app.workbench import STEP_PREFIX

if TYPE_CHECKING:
    from nbformat import NotebookNode

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """Prints where a run of notebooks is: one line per notebook, per step inside it and per reported line.

    Every line starts with the time since the run began and ends with an estimate of the time left in the whole
    run (the previous run's per-notebook and per-cell timings; :data:`~matsteer.app.timings.DEFAULT_SECONDS` before the first run).
    Lines a notebook prints through :func:`~matsteer.app.workbench.report_step` are echoed; the kernel's stderr (warnings, errors,
    progress bars) is passed through to ``err`` as it arrives.
    """

    def __init__(self, estimates: Mapping[str, Estimate], *, out: TextIO | None = None, err: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.estimates = dict(estimates)
        self.names = list(estimates)
        self._next = 0  # position in names of the next (or running) notebook
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.clock = clock
        self.t0 = clock()
        self._name: str | None = None
        self._tag = ""
        self._cells: list[str] = []  # cell ids of the running notebook, in order
        self._cell: int | None = None
        self._cell_t0 = self._nb_t0 = self.t0
        self._labels: dict[int, str] = {}
        self._pending = ""  # stdout after the last newline: a step line may arrive in pieces

    # -- estimates ------------------------------------------------------------------------------------------------
    def _current_left(self) -> float | None:
        """Estimated seconds left in the running notebook (0 between notebooks)."""
        if self._name is None:
            return 0.0
        est = self.estimates.get(self._name) or Estimate(None)
        now = self.clock()
        if est.cells and self._cell is not None:
            rest = sum(est.cells.get(cid, 0.0) for cid in self._cells[self._cell + 1:])
            return rest + max(0.0, est.cells.get(self._cells[self._cell], 0.0) - (now - self._cell_t0))
        if est.seconds is None:
            return None
        return max(0.0, est.seconds - (now - self._nb_t0))

    def left(self) -> float | None:
        """Estimated seconds left in the whole run; None when a notebook has no estimate at all."""
        current = self._current_left()
        start = self._next + 1 if self._name is not None else self._next
        later = [self.estimates[n].seconds for n in self.names[start:]]
        if current is None or any(v is None for v in later):
            return None
        return current + sum(v for v in later if v is not None)

    def line(self, text: str, *, estimate: bool = True) -> None:
        """Print ``[elapsed] text  (~left)``."""
        message = f"[{format_clock(self.clock() - self.t0)}] {text}"
        left = self.left() if estimate else None
        if left is not None:
            message += f"  (~{format_clock(left)} left)"
        print(message, file=self.out, flush=True)

    # -- events ---------------------------------------------------------------------------------------------------
    def notebook_started(self, name: str, nb: NotebookNode) -> None:
        """A notebook starts: its cells, step labels and estimate; prints its line."""
        self._name, self._tag = name, name.split("_", 1)[0]
        self._cells = [str(c.get("id", i)) for i, c in enumerate(nb.cells)]
        self._cell, self._nb_t0 = None, self.clock()
        self._labels = step_labels(nb)
        if name in self.names:
            self._next = self.names.index(name)
        est = self.estimates.get(name)
        took = ""
        if est is not None and est.seconds is not None:
            took = f", {'last run' if est.measured else 'expected'} {format_clock(est.seconds)}"
        self.line(f"{name} ({self._next + 1}/{len(self.names)}{took})")

    def cell_started(self, index: int) -> None:
        """A cell starts; prints its step line if it has a label."""
        self._cell, self._cell_t0 = index, self.clock()
        label = self._labels.get(index)
        if label is not None:
            self.line(f"  {self._tag} · {label}")

    def kernel_message(self, msg: Mapping[str, Any]) -> None:
        """An iopub message of the running cell: echo report_step lines, pass stderr through."""
        if msg.get("msg_type") != "stream":
            return
        content = msg.get("content") or {}
        text = str(content.get("text", ""))
        if content.get("name") == "stderr":
            self.err.write(text)
            self.err.flush()
            return
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        self._pending = self._pending[-4096:]  # output without newlines (a \r progress bar) cannot hold a step line
        for raw in lines:
            if raw.startswith(STEP_PREFIX):
                self.line(f"  {self._tag} · {raw[len(STEP_PREFIX):].strip()}")

    def notebook_finished(self, run: NotebookRun) -> None:
        """A notebook finished; prints its wall time and where the executed copy is."""
        self._name, self._cell, self._pending = None, None, ""
        self._next += 1
        self.line(f"{run.name} done in {format_clock(run.seconds)} -> {display_path(run.output)}")
