"""Running the six notebooks headless: parameters checked and injected, nbclient execution, progress, failures.

:func:`run_notebook` checks parameter values against a notebook's ``parameters`` cell, injects them right after it
(:mod:`matsteer.app.parameters`), executes the notebook with nbclient and writes the executed copy to
``build/notebooks/``. :func:`run_all` runs the six in order, sharing the feature, steerer, figure and result
folders so that later notebooks reuse what earlier ones wrote.

Headless runs talk (``talk=True``, as ``make demo`` does): a line when each notebook starts and ends and when each
step inside it starts (its section heading and first line of code), every line a notebook prints through
:func:`~matsteer.app.workbench.report_step` (the comparison reports each method), each with the elapsed time and
an estimate of what is left, taken from the previous run's timings (``<out>/timings.json``). Kernels talk to the
runner over IPC sockets in a private folder, not over TCP. A failing cell is named (notebook, cell, error) and the
partly executed copy is kept.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from matsteer.app.parameters import Parameter, check_parameters, notebook_parameters, parameterized
from matsteer.app.paths import notebooks_dir, project_root
from matsteer.app.progress import ProgressPrinter
from matsteer.app.steps import first_code_line
from matsteer.app.timings import NotebookRun, load_timings, notebook_estimates, save_timing
from matsteer.errors import ConfigError, MatSteerError

if TYPE_CHECKING:
    from nbformat import NotebookNode
    from traitlets.config import Config

__all__ = ["NOTEBOOKS", "NotebookExecutionError", "run_all", "run_notebook", "selected_notebooks"]

NOTEBOOKS: tuple[str, ...] = (
    "01_extract_activations.ipynb",
    "02_train_steering.ipynb",
    "03_visualize_gates_and_vectors.ipynb",
    "04_evaluate.ipynb",
    "05_tune_multipliers.ipynb",
    "06_paper_figures.ipynb",
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# One notebook of a run: its path, its share of the shared values, the parameters it declares.
_Plan = tuple[Path, dict[str, Any], dict[str, Parameter]]


class NotebookExecutionError(MatSteerError, RuntimeError):
    """A notebook cell failed; the partly executed copy was saved (its path is in the message)."""


def selected_notebooks(folder: Path, only: Sequence[str] | None) -> list[Path]:
    """The notebooks of ``folder`` in order, or those whose names start with one of the ``only`` prefixes."""
    return [folder / n for n in NOTEBOOKS if not only or any(n.startswith(p) for p in only)]


class _CellWatch:
    """nbclient hooks: which cell runs, how long each took, and the messages for a :class:`ProgressPrinter`."""

    def __init__(self, printer: ProgressPrinter | None) -> None:
        self.printer = printer
        self.index: int | None = None
        self.started = 0.0
        self.seconds: dict[str, float] = {}

    def start(self, index: int) -> None:
        self.index, self.started = index, time.perf_counter()
        if self.printer is not None:
            self.printer.cell_started(index)

    def executed(self, nb: NotebookNode, index: int) -> None:
        self.seconds[str(nb.cells[index].get("id", index))] = time.perf_counter() - self.started

    def message(self, msg: Mapping[str, Any]) -> None:
        if self.printer is not None:
            self.printer.kernel_message(msg)


def _client_class() -> type:
    """NotebookClient that shows every iopub message of the running cell to a :class:`_CellWatch`.

    ``process_message`` sees each message as it arrives (also those an Output widget captures), which is what
    lets a headless run stream a notebook's progress lines instead of finding them in the saved copy afterwards.
    """
    from nbclient import NotebookClient

    class WatchedClient(NotebookClient):
        watch: _CellWatch | None = None

        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            if self.watch is not None:
                self.watch.message(msg)
            return super().process_message(msg, cell, cell_index)

    return WatchedClient


@contextmanager
def _kernel_config() -> Iterator[Config]:
    """traitlets config for the kernel manager: IPC sockets in a private temporary folder (POSIX).

    Over TCP ipykernel warns that the connection is unencrypted, on every start; IPC keeps the traffic off the
    network altogether. Absolute socket paths, because the kernel runs in another working directory.
    """
    from traitlets.config import Config

    if os.name != "posix":
        yield Config()
        return
    with tempfile.TemporaryDirectory(prefix="matsteer-kernel-") as folder:
        yield Config({"KernelManager": {"transport": "ipc", "ip": str(Path(folder) / "kernel")}})


def _failure(path: Path, nb: NotebookNode, index: int | None, exc: BaseException, seconds: float, output: Path,
             timeout: int) -> NotebookExecutionError:
    """The error that names the notebook, the cell and the problem, and points to the partly executed copy."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    where = "before the first cell"
    if index is not None:
        code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        label = first_code_line(nb.cells[index].source)
        number = code_cells.index(index) + 1 if index in code_cells else index + 1
        where = f"in code cell {number} of {len(code_cells)} ({label!r})"
    if isinstance(exc, CellTimeoutError):
        problem = f"the cell ran longer than its {timeout} s limit"
    elif isinstance(exc, DeadKernelError):
        problem = "the kernel died (out of memory, or killed)"
    else:
        ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
        problem = f"{ename}: {_ANSI.sub('', str(evalue)).strip()}"
    detail = _ANSI.sub("", str(exc)).strip().splitlines()
    return NotebookExecutionError(
        f"{path.name} failed {where} after {seconds:.0f} s: {problem}\n"
        f"The partly executed notebook is {output} (open it to see the cell's output).\n"
        + "\n".join(detail[-25:])
    )


def _kernel_env(threads: int | None) -> dict[str, str]:
    """The kernel's environment: this one, with the CPU thread count of torch/BLAS set if ``threads`` is given."""
    env = dict(os.environ)
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"threads must be None or an integer >= 1, got {threads!r}.")
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _execute(nb: NotebookNode, path: Path, output: Path, *, timeout: int, kernel_name: str, workdir: Path,
             env: Mapping[str, str], watch: _CellWatch) -> float:
    """Run every cell of ``nb`` in place in a fresh kernel; returns the wall seconds.

    On a failing cell the partly executed copy is written to ``output`` and :class:`NotebookExecutionError` raised.
    """
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    t0 = time.perf_counter()
    with _kernel_config() as config:
        client = _client_class()(
            nb, timeout=timeout, kernel_name=kernel_name, config=config,
            resources={"metadata": {"path": str(workdir)}},
            on_cell_start=lambda cell, cell_index: watch.start(cell_index),
            on_cell_executed=lambda cell, cell_index, execute_reply: watch.executed(nb, cell_index))
        client.watch = watch
        try:
            client.execute(env=env)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            nbformat.write(nb, str(output))
            raise _failure(path, nb, watch.index, exc, time.perf_counter() - t0, output, timeout) from exc
    return time.perf_counter() - t0


def run_notebook(
    path: str | Path,
    parameters: Mapping[str, Any] | None = None,
    out_dir: str | Path = "build/notebooks",
    timeout: int = 600,
    *,
    cwd: str | Path | None = None,
    kernel_name: str = "python3",
    threads: int | None = None,
    printer: ProgressPrinter | None = None,
) -> NotebookRun:
    """Execute a notebook headless with ``parameters`` and save the executed copy as ``out_dir/<name>``.

    parameters: checked against the notebook's ``parameters`` cell (unknown name or wrong type -> ConfigError,
    before any kernel starts) and injected in a cell right after it. timeout: seconds per cell.
    cwd: the kernel's working directory (default: the project root). kernel_name: ``python3``, the interpreter
    running this function, whatever kernels are registered. threads: CPU threads for the kernel's
    torch/BLAS (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``); on a shared 2-core machine, 1 thread avoids the
    many-fold slowdown of OpenMP threads waiting on a busy core. printer: prints progress lines while it runs.
    On a failing cell the partly executed copy is still written, then :class:`NotebookExecutionError` (naming
    the notebook, the cell and the error) is raised.
    """
    import nbformat

    path = Path(path)
    nb, values = parameterized(path, parameters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    workdir = Path(cwd) if cwd is not None else project_root(path.parent)
    env = _kernel_env(threads)
    watch = _CellWatch(printer)
    if printer is not None:
        printer.notebook_started(path.stem, nb)
    seconds = _execute(nb, path, output, timeout=timeout, kernel_name=kernel_name, workdir=workdir, env=env,
                       watch=watch)
    nb.metadata.setdefault("matsteer", {})["run"] = {"parameters": values, "seconds": round(seconds, 2)}
    nbformat.write(nb, str(output))
    run = NotebookRun(path.stem, path, output, values, seconds, dict(watch.seconds))
    if printer is not None:
        printer.notebook_finished(run)
    return run


def _plans(paths: Sequence[Path], shared: Mapping[str, Any]) -> list[_Plan]:
    """(notebook, its share of ``shared``, what it declares) for each notebook, every value checked up front.

    So a bad value for notebook 04 does not surface after 01-03 ran; a value no notebook declares is refused.
    """
    plans: list[_Plan] = []
    for path in paths:
        declared = notebook_parameters(path)
        mine = {k: v for k, v in shared.items() if k in declared}
        check_parameters(declared, mine, path)
        plans.append((path, mine, declared))
    unused = sorted(set(shared) - {k for _, _, d in plans for k in d})
    if unused:
        raise ConfigError(f"No selected notebook declares the parameter(s) {unused}; see each notebook's parameters "
                          "cell.")
    return plans


def run_all(
    quick: bool = True,
    out_dir: str | Path = "build/notebooks",
    parameters: Mapping[str, Any] | None = None,
    *,
    folder: str | Path | None = None,
    only: Sequence[str] | None = None,
    timeout: int | None = None,
    cwd: str | Path | None = None,
    threads: int | None = None,
    talk: bool = False,
    out: TextIO | None = None,
) -> list[NotebookRun]:
    """Run the six notebooks in order with ``quick`` and shared ``parameters`` (each gets the ones it declares).

    only: notebook name prefixes to run (e.g. ``["01", "02"]``). talk: print progress lines (to ``out``, default
    stdout; see :class:`ProgressPrinter`). Each finished notebook's wall and cell times are kept in
    ``out_dir/timings.json`` for the next run's estimates. Returns the runs with their wall times.
    """
    folder = Path(folder) if folder is not None else notebooks_dir()
    shared = {"quick": quick, **dict(parameters or {})}
    plans = _plans(selected_notebooks(folder, only), shared)
    # Full mode runs the whole comparison in notebook 04's one cell (about 20 minutes on 2 cores).
    timeout = timeout if timeout is not None else (900 if quick else 7200)
    out_dir = Path(out_dir)
    printer = None
    if talk:
        printer = ProgressPrinter(notebook_estimates([p.stem for p, _, _ in plans], quick, load_timings(out_dir)), out=out)
    runs = []
    for path, mine, _ in plans:
        run = run_notebook(path, mine, out_dir, timeout, cwd=cwd, threads=threads, printer=printer)
        save_timing(out_dir, quick, run)
        runs.append(run)
    return runs
