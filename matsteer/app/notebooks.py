"""The workbench notebooks' command line: run them headless, register their kernel, strip their outputs.

Notebooks (``notebooks/``, committed without outputs) hold only a story and calls into matsteer
(:mod:`matsteer.app.workbench`); one cell tagged ``parameters`` holds their settings
(:mod:`matsteer.app.parameters`), and :mod:`matsteer.app.runner` executes them headless.

Command line: ``python -m matsteer.app.notebooks [--full] [--only 01 03] [--out build/notebooks]``, ending with a
summary (the comparison table, where the outputs are, the wall time; :mod:`matsteer.app.summary`);
``--install-kernel`` registers the ``matsteer`` kernel of this environment (``make lab``).
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matsteer.app.paths import notebooks_dir
from matsteer.app.runner import run_all, selected_notebooks
from matsteer.app.summary import output_folders, run_summary
from matsteer.app.timings import format_clock
from matsteer.errors import MatSteerError

__all__ = ["KERNEL_NAME", "install_kernel", "main", "strip_outputs"]

#: The Jupyter kernel ``make lab`` registers for this environment; the notebooks' kernelspec names it.
KERNEL_NAME = "matsteer"


def install_kernel(prefix: str | Path | None = None, *, name: str = KERNEL_NAME,
                   display_name: str | None = None) -> Path:
    """Register this interpreter as the Jupyter kernel ``name`` under ``prefix`` (default: this environment,
    ``sys.prefix``, so the kernel lives and goes with the virtual environment). Returns the kernelspec folder.

    The display name says which environment it runs, e.g. ``matsteer (.venv)``.
    """
    from ipykernel.kernelspec import install

    display_name = display_name or f"{name} ({Path(sys.prefix).name})"
    return Path(install(kernel_name=name, display_name=display_name, prefix=str(prefix or sys.prefix)))


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts from a notebook in place; True if it changed."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            changed = True
        cell.outputs, cell.execution_count = [], None
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    if changed:
        nbformat.write(nb, str(path))
    return changed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m matsteer.app.notebooks", description="Run the workbench notebooks.")
    parser.add_argument("--full", action="store_true", help="full limits instead of quick mode")
    parser.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 01 02")
    parser.add_argument("--out", default="build/notebooks", help="folder for executed copies")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per kernel (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=LITERAL",
                        help="extra parameters, e.g. layer=10 steerer_dir='\"results/x\"'")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    parser.add_argument("--install-kernel", action="store_true",
                        help=f"register this environment's Jupyter kernel {KERNEL_NAME!r} and exit (make lab)")
    return parser


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set NAME=LITERAL`` values: Python literals, else the text itself (a bare string)."""
    extra: dict[str, Any] = {}
    for item in items:
        name, _, literal = item.partition("=")
        try:
            extra[name] = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            extra[name] = literal  # a bare string
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run the notebooks (or register the kernel); 0 on success, 2 on a matsteer error (printed to stderr)."""
    args = _parser().parse_args(argv)
    if args.install_kernel:
        print(f"Jupyter kernel {KERNEL_NAME!r} -> {install_kernel()}")
        return 0
    extra = _parse_sets(args.set)
    t0 = time.perf_counter()
    try:
        runs = run_all(quick=not args.full, out_dir=args.out, parameters=extra, only=args.only,
                       threads=args.threads, talk=not args.quiet)
    except MatSteerError as exc:
        print(f"\nerror: {exc}\n\nStopped after {format_clock(time.perf_counter() - t0)}.", file=sys.stderr)
        return 2
    paths = selected_notebooks(notebooks_dir(), args.only)
    print(run_summary(runs, output_folders(extra, paths), Path(args.out), time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
