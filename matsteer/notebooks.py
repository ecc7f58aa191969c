"""The five workbench notebooks: their shared settings, and running them headless with parameters.

Notebooks (``notebooks/``, committed without outputs) hold only a story and calls into matsteer. Each has one cell
tagged ``parameters`` with plain assignments (optionally annotated, e.g. ``epochs: int | None = None``).
:func:`run_notebook` checks parameter values against that cell (an unknown name or a wrong type raises
:class:`~matsteer.errors.ConfigError` naming the parameter), injects a cell with the new values right after it
(tagged ``injected-parameters``), executes the notebook with nbclient and writes the executed copy to
``build/notebooks/``. :func:`run_all` runs the five in order, sharing the feature, steerer, figure and result
folders so that later notebooks reuse what earlier ones wrote.

Helpers the notebooks call (:func:`workbench`, :class:`Workbench`, the ``*_table`` functions) live here too, so
the notebooks define no functions of their own.

Headless runs talk (``talk=True``, as ``make demo`` does): a line when each notebook starts and ends and when each
step inside it starts (its section heading and first line of code), every line a notebook prints through
:func:`report_step` (the comparison reports each method), each with the elapsed time and an estimate of what is
left, taken from the previous run's timings (``<out>/timings.json``). Kernels talk to the runner over IPC sockets
in a private folder, not over TCP. A failing cell is named (notebook, cell, error) and the partly executed copy is
kept.

Command line: ``python -m matsteer.notebooks [--full] [--only 01 03] [--out build/notebooks]``, ending with a
summary (the comparison table, where the outputs are, the wall time); ``--install-kernel`` registers the
``matsteer`` kernel of this environment (``make lab``).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError, MatSteerError
from .pipeline import DemoConfig, feature_dir
from .sites import Site
from .train import TrainConfig

__all__ = [
    "KERNEL_NAME",
    "NOTEBOOKS",
    "QUICK",
    "STEP_PREFIX",
    "NotebookExecutionError",
    "NotebookRun",
    "Parameter",
    "ProgressPrinter",
    "Workbench",
    "comparison_summary",
    "feature_table",
    "install_kernel",
    "kernel_scale_table",
    "loss_table",
    "notebook_parameters",
    "notebooks_dir",
    "parameterize_notebook",
    "project_root",
    "quick_evaluation",
    "report_step",
    "run_all",
    "run_notebook",
    "step_labels",
    "strip_outputs",
    "workbench",
]

NOTEBOOKS: tuple[str, ...] = (
    "01_extract_activations.ipynb",
    "02_train_steering.ipynb",
    "03_visualize_gates_and_vectors.ipynb",
    "04_evaluate.ipynb",
    "05_tune_multipliers.ipynb",
)

# Quick mode: a few groups per data set and split, a few epochs, short generations. Sized so the five notebooks
# run in about two minutes on 2 CPU cores with the default model.
QUICK: dict[str, Any] = {
    "limits": {"truthfulqa": 12, "toxigen": 24, "bbq": 12},
    "dev_limits": {"truthfulqa": 6, "toxigen": 12, "bbq": 6},
    "epochs": 5,
    "max_new_tokens": 16,
    "dev_questions": 3,
    "eval_limits": {"truthfulqa": 3, "toxigen": 4, "bbq": 3},
}
FULL: dict[str, Any] = {"max_new_tokens": 48, "dev_questions": 20}

#: The Jupyter kernel ``make lab`` registers for this environment; the notebooks' kernelspec names it.
KERNEL_NAME = "matsteer"
#: A notebook line starting with this (see :func:`report_step`) is echoed by a talking headless run.
STEP_PREFIX = "[matsteer] "
#: Per-notebook wall seconds of the previous runs, per mode, kept beside the executed notebooks.
TIMINGS_FILE = "timings.json"
#: Estimates (wall seconds, 2-core machine, README) used until a run has been timed here.
DEFAULT_SECONDS: dict[str, dict[str, float]] = {
    "quick": {"01_extract_activations": 22, "02_train_steering": 9, "03_visualize_gates_and_vectors": 21,
              "04_evaluate": 120, "05_tune_multipliers": 23},
    "full": {"01_extract_activations": 144, "02_train_steering": 22, "03_visualize_gates_and_vectors": 26,
             "04_evaluate": 1054, "05_tune_multipliers": 59},
}


class NotebookExecutionError(MatSteerError, RuntimeError):
    """A notebook cell failed; the partly executed copy was saved (its path is in the message)."""


# --------------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------------


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``pyproject.toml`` above ``start`` (default: the cwd), else the cwd itself.

    Notebooks run from ``notebooks/`` in JupyterLab but from anywhere headless; resolving relative folders against
    the project root makes ``features`` mean the same folder in both.
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "matsteer").is_dir():
            return folder
    return here


def notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder (next to the installed package in a source checkout)."""
    return Path(__file__).resolve().parents[1] / "notebooks"


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


# --------------------------------------------------------------------------------------------------------------
# What the notebooks share
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Workbench:
    """The settings every notebook derives from its parameters (absolute folders, quick or full limits)."""

    demo: DemoConfig
    quick: bool
    seed: int
    steerer_dir: Path
    figures_dir: Path
    results_dir: Path
    max_new_tokens: int
    dev_questions_per_task: int
    eval_limits: dict[str, int | None] = field(default_factory=dict)

    @property
    def site(self) -> Site:
        return Site(self.demo.layer, self.demo.site)

    @property
    def features_dir(self) -> Path:
        return self.demo.features_dir

    def feature_folders(self, split: str) -> list[Path]:
        """The feature folder of each QA data set for ``split``; refuses missing ones (run notebook 01 first)."""
        folders = [feature_dir(self.demo.features_dir, self.demo.model, ds, split, self.site, self.demo.tokens)
                   for ds in self.demo.datasets]
        missing = [str(f) for f in folders if not (f / "manifest.json").is_file()]
        if missing:
            raise ConfigError(f"No extracted features at {missing}. Run 01_extract_activations.ipynb with the same "
                              "model, layer, quick and features_dir first.")
        return folders

    def load_features(self, split: str) -> list[Any]:
        from .features import load_features

        return [load_features(f) for f in self.feature_folders(split)]

    def load_steerer(self, loaded: Any) -> tuple[Any, Site]:
        """The steerer saved in ``steerer_dir`` and its site, checked against ``loaded`` and this site.

        Raises :class:`~matsteer.errors.ArtifactError` (missing folder: run notebook 02) or when the steerer was
        trained on another model, hidden size or site; warnings for allowed mismatches are printed.
        """
        from .artifacts import check_compatible, load_steerer

        if not (self.steerer_dir / "manifest.json").is_file():
            raise ConfigError(f"No steerer at {self.steerer_dir}. Run 02_train_steering.ipynb with the same "
                              "steerer_dir first.")
        steerer, manifest = load_steerer(self.steerer_dir)
        for warning in check_compatible(manifest, model_name=loaded.name, model_hash=loaded.weight_hash,
                                        d=loaded.hidden_size, site=self.site):
            print(f"warning: {warning}")
        return steerer, Site.from_dict(manifest["site"])

    def dev_questions(self, n: int | None = None) -> dict[str, list[Any]]:
        """A small sample of dev multiple-choice questions per QA task (for the tuner's "Score dev")."""
        from .data import load_mc_questions

        n = self.dev_questions_per_task if n is None else n
        if n <= 0:
            return {}
        return {ds: load_mc_questions(ds, "dev", limit=n, seed=0) for ds in self.demo.datasets}

    def paradetox_texts(self, n: int | None = None, split: str = "dev") -> dict[str, list[str]]:
        """ParaDetox sentences for the gate analysis (Table 2): ``{"Toxic": [...], "Non-toxic": [...]}``.

        n: pairs (groups) to take; default 8 in quick mode, 100 otherwise.
        """
        from .data import load_examples

        n = (8 if self.quick else 100) if n is None else n
        examples = load_examples("paradetox", split, limit=n, seed=0)
        return {"Toxic": [e.text for e in examples if e.label == 0],
                "Non-toxic": [e.text for e in examples if e.label == 1]}

    def to_dict(self) -> dict[str, Any]:
        return {"demo": self.demo.to_dict(), "quick": self.quick, "seed": self.seed,
                "steerer_dir": str(self.steerer_dir), "figures_dir": str(self.figures_dir),
                "results_dir": str(self.results_dir), "max_new_tokens": self.max_new_tokens,
                "dev_questions_per_task": self.dev_questions_per_task, "eval_limits": dict(self.eval_limits)}


def workbench(
    *,
    model: str = "smollm2-135m-instruct",
    layer: int = 14,
    quick: bool = True,
    seed: int = 0,
    features_dir: str | Path = "features",
    steerer_dir: str | Path = "results/notebooks/steerer",
    figures_dir: str | Path = "figures",
    results_dir: str | Path = "results/notebooks",
    epochs: int | None = None,
    preset: str = "default",
    sigma: float | str | None = None,
    site: str = "residual",
) -> Workbench:
    """Build the shared settings from a notebook's parameters (relative folders are under the project root).

    quick: small data limits (:data:`QUICK`), ``epochs`` default 5 instead of 100, short generations.
    preset: the training settings (``TrainConfig.preset``: "default", "paper", "reference"; docs/training.md).
    sigma: overrides the preset's kernel width, a number or ``"median"`` (σ = 2 is far too small for raw
    activations; see ``docs/losses.md`` and the kernel scale table of notebook 01).
    """
    base = DemoConfig()
    epochs = epochs if epochs is not None else (QUICK["epochs"] if quick else base.train.epochs)
    overrides = {"epochs": epochs, "seed": seed, **({"sigma": sigma} if sigma is not None else {})}
    train = TrainConfig.preset(preset, **overrides)
    train.validate()
    demo = DemoConfig(
        model=model, layer=layer, site=site, train=train, features_dir=_resolve(features_dir),
        out_dir=_resolve(results_dir),
        limits=dict(QUICK["limits"]) if quick else dict(base.limits),
        dev_limits=dict(QUICK["dev_limits"]) if quick else dict(base.dev_limits),
    )
    Site(layer, site)  # validates the layer and component early
    mode = QUICK if quick else FULL
    return Workbench(
        demo=demo, quick=quick, seed=seed, steerer_dir=_resolve(steerer_dir), figures_dir=_resolve(figures_dir),
        results_dir=_resolve(results_dir), max_new_tokens=int(mode["max_new_tokens"]),
        dev_questions_per_task=int(mode["dev_questions"]),
        eval_limits=dict(QUICK["eval_limits"]) if quick else {},
    )


def feature_table(sets: Sequence[Any]) -> Any:
    """One row per feature folder: data set, split, texts, rows, positives, negatives, d (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for fs in sets:
        m = fs.manifest
        rows.append({"dataset": m["dataset"], "split": m["split"], "attribute": fs.attribute,
                     "positive side": fs.positive_side, "texts": m.get("texts"), "rows": int(fs.activations.shape[0]),
                     "positives": int((fs.labels == 1).sum()), "negatives": int((fs.labels == 0).sum()),
                     "d": int(fs.activations.shape[1])})
    return pd.DataFrame(rows)


def kernel_scale_table(
    data: Sequence[Any],
    settings: Iterable[tuple[float | str, bool]] = ((2.0, False), ("median", False), (2.0, True)),
    seed: int = 0,
) -> Any:
    """:func:`~matsteer.train.kernel_scale_report` for several (σ, standardize) settings, as a DataFrame."""
    import pandas as pd

    from .train import kernel_scale_report

    rows = []
    for sigma, standardize in settings:
        r = kernel_scale_report(data, sigma, standardize=standardize, seed=seed)
        rows.append({"sigma setting": sigma, "standardize": standardize, "sigma": r["sigma"],
                     "median distance": r["median_pairwise_distance"], "mean norm": r["mean_norm"],
                     "mean k(x,y)": r["mean_offdiag_kernel"], "frac k<1e-6": r["frac_kernel_below_1e-6"],
                     "advice": r["advice"]})
    return pd.DataFrame(rows)


def loss_table(history: Any, split: str = "train") -> Any:
    """Last-epoch loss terms (rows) per attribute and summed (columns), as a DataFrame; None without that split."""
    import pandas as pd

    final = history.final(split)
    return None if final is None else pd.DataFrame(final).T


def quick_evaluation(wb: Workbench, *, progress: bool = False, steps: bool = True) -> dict[str, Any]:
    """Run the method comparison (:func:`matsteer.experiments.run_evaluation`) at the notebook's settings.

    Quick mode: one seed, one multiplier, the notebook's training setting, few questions, a short bootstrap.
    Features are shared with notebooks 01/02 (same folders and limits). Writes ``eval.json`` / ``eval.md`` under
    ``wb.results_dir`` and returns the report. steps: print a :func:`report_step` line as each part of the
    comparison starts (set-up, each method's dev tuning, each test run); progress: tqdm bars as well.
    """
    from .experiments import EvalConfig, run_evaluation

    cfg = EvalConfig(demo=copy.deepcopy(wb.demo), out_dir=Path(wb.results_dir))
    if wb.quick:
        cfg.seeds, cfg.multipliers, cfg.iti_alphas, cfg.icl_shots = (wb.seed,), (1.0,), (1.0,), (1,)
        cfg.dev_limits, cfg.test_limits = dict(wb.eval_limits), dict(wb.eval_limits)
        cfg.training_candidates, cfg.n_boot = ({},), 200
    return run_evaluation(cfg, progress=progress, on_step=report_step if steps else None)


def report_step(message: str) -> None:
    """Print one progress line from inside a notebook; a talking headless run echoes it with times."""
    print(f"{STEP_PREFIX}{message}", flush=True)


def markdown_report(report: Mapping[str, Any], results_dir: str | Path | None = None) -> str:
    """The evaluation's markdown table: ``eval.md`` beside the report when written, else rebuilt from the report."""
    from .experiments import markdown_table

    if results_dir is not None and (Path(results_dir) / "eval.md").is_file():
        return (Path(results_dir) / "eval.md").read_text(encoding="utf-8")
    return markdown_table(report)


# --------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------

_TYPE_NAMES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "None": (type(None),),
    "list": (list, tuple), "tuple": (tuple, list), "dict": (dict,), "Path": (str,),
}


@dataclass(frozen=True)
class Parameter:
    """One assignment of a ``parameters`` cell: its default and the types a new value may have."""

    name: str
    default: Any
    types: tuple[type, ...] | None  # None: anything (a None default without annotation)
    annotation: str | None = None

    def check(self, value: Any) -> Any:
        """``value`` (a ``Path`` becomes ``str``) if its type fits, else :class:`ConfigError` naming the parameter."""
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if self.types is None:
            return value
        ok = isinstance(value, self.types)
        if isinstance(value, bool) and bool not in self.types:
            ok = False  # True is an int to Python, not to a notebook parameter
        if isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            want = self.annotation or " | ".join(t.__name__ for t in self.types)
            raise ConfigError(f"Notebook parameter {self.name!r} must be {want}, got {type(value).__name__} "
                              f"{value!r} (default {self.default!r}).")
        return value


def _annotation_types(node: ast.expr) -> tuple[type, ...]:
    """Types of an annotation made of builtin names, ``None`` and ``|`` unions (``int | None``)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _annotation_types(node.left) + _annotation_types(node.right)
    if isinstance(node, ast.Constant) and node.value is None:
        return (type(None),)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        try:
            parsed = ast.parse(node.value, mode="eval").body
        except SyntaxError as exc:
            raise ConfigError(f"Unsupported parameter annotation {node.value!r} ({exc.msg}); use builtin types, "
                              "None and |.") from exc
        return _annotation_types(parsed)
    if isinstance(node, ast.Subscript):  # list[str], dict[str, int]: check the container only
        return _annotation_types(node.value)
    if isinstance(node, ast.Name) and node.id in _TYPE_NAMES:
        return _TYPE_NAMES[node.id]
    raise ConfigError(f"Unsupported parameter annotation {ast.unparse(node)!r}; use builtin types, None and |.")


def _parameters_cell(nb: Any, path: str | Path) -> tuple[int, Any]:
    found = [(i, c) for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        raise ConfigError(f"{path} must have exactly one cell tagged 'parameters', found {len(found)}.")
    return found[0]


def _parse_parameters(source: str, path: str | Path) -> dict[str, Parameter]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"The parameters cell of {path} is not valid Python: {exc}.") from exc
    params: dict[str, Parameter] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value_node, ann = node.targets[0].id, node.value, None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value_node, ann = node.target.id, node.value, node.annotation
        else:
            raise ConfigError(f"The parameters cell of {path} may hold only `name = literal` assignments; "
                              f"found {ast.unparse(node)!r}.")
        try:
            default = ast.literal_eval(value_node)
        except ValueError as exc:
            raise ConfigError(f"Parameter {name!r} in {path} needs a literal default, got {ast.unparse(value_node)!r}.") from exc
        if ann is not None:
            types_ = _annotation_types(ann)
        elif default is None:
            types_ = None
        else:
            types_ = _TYPE_NAMES.get(type(default).__name__, (type(default),))
        params[name] = Parameter(name, default, types_, None if ann is None else ast.unparse(ann))
    return params


def notebook_parameters(path: str | Path) -> dict[str, Parameter]:
    """The parameters a notebook declares in its ``parameters`` cell, in order."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    _, cell = _parameters_cell(nb, path)
    return _parse_parameters(cell.source, path)


def _check_parameters(declared: Mapping[str, Parameter], values: Mapping[str, Any], path: str | Path
                      ) -> dict[str, Any]:
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ConfigError(f"Unknown parameter(s) {unknown} for {Path(path).name}; it declares {list(declared)}.")
    checked = {}
    for name, value in values.items():
        value = declared[name].check(value)
        try:
            if ast.literal_eval(repr(value)) != value:
                raise ValueError
        except (ValueError, SyntaxError, RecursionError) as exc:
            raise ConfigError(f"Notebook parameter {name!r} must be a plain literal (str, number, bool, None, "
                              f"list, dict), got {value!r}.") from exc
        checked[name] = value
    return checked


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------


def _parameterized(path: Path, parameters: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The notebook with an ``injected-parameters`` cell after its parameters cell, and the checked values."""
    import nbformat

    if not path.is_file():
        raise ConfigError(f"Notebook {path} not found.")
    nb = nbformat.read(str(path), as_version=4)
    index, cell = _parameters_cell(nb, path)
    values = _check_parameters(_parse_parameters(cell.source, path), dict(parameters or {}), path)
    if values:
        lines = ["# Parameters injected by matsteer.notebooks"]
        lines += [f"{k} = {v!r}" for k, v in values.items()]
        injected = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(index + 1, injected)
    return nb, values


def parameterize_notebook(path: str | Path, parameters: Mapping[str, Any], out: str | Path) -> Path:
    """Write a copy of a notebook with ``parameters`` injected (checked as in :func:`run_notebook`), unexecuted.

    For opening a parameterised copy in JupyterLab. ``out``: the file to write (its folder is created).
    """
    import nbformat

    nb, _ = _parameterized(Path(path), parameters)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    return out


@dataclass
class NotebookRun:
    """One executed notebook: where it came from and went, its parameters and wall time (and each cell's)."""

    name: str
    source: Path
    output: Path
    parameters: dict[str, Any]
    seconds: float
    cell_seconds: dict[str, float] = field(default_factory=dict)  # by cell id, for the next run's estimates


# --------------------------------------------------------------------------------------------------------------
# Talking while running: step labels, the progress printer, timings of earlier runs
# --------------------------------------------------------------------------------------------------------------

_MAGIC = re.compile(r"^\s*[%!]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _section(source: str) -> str | None:
    """The text of a markdown cell's first ``##``-or-deeper heading (``#`` is the notebook's title)."""
    for line in source.splitlines():
        match = re.match(r"^(#{2,6})\s+(.*\S)", line)
        if match:
            return match.group(2)
    return None


def _first_code_line(source: str, width: int = 72) -> str:
    """The first line of code that does something (imports, comments and magics skipped, unless that is all)."""
    lines = [line.strip() for line in source.splitlines()
             if line.strip() and not line.strip().startswith("#") and not _MAGIC.match(line)]
    doing = [line for line in lines if not re.match(r"^(import|from)\s", line)]
    text = (doing or lines or [""])[0]
    return text if len(text) <= width else text[: width - 3] + "..."


def _code(source: str) -> str:
    """Cell source with IPython magics blanked out, so that ``ast`` can read it."""
    return "\n".join("" if _MAGIC.match(line) else line for line in source.splitlines())


def _is_setup_cell(source: str) -> bool:
    """Only imports (and ``%`` magics): nothing worth a progress line."""
    try:
        body = ast.parse(_code(source)).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


_TRIVIAL_CALLS = frozenset({"print", "len", "str", "int", "float", "list", "dict", "tuple", "sorted", "zip", "range",
                            "enumerate", "join", "items", "keys", "values", "format", "Site", "Path"})


def _calls(source: str, limit: int = 4) -> list[str]:
    """The functions a cell calls, outermost first, in order (builtins and trivial helpers left out)."""
    try:
        tree = ast.parse(_code(source))
    except SyntaxError:
        return []
    names: list[str] = []
    for statement in tree.body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name and name not in _TRIVIAL_CALLS and name not in names:
                    names.append(name)
    return names[:limit]


def step_labels(nb: Any) -> dict[int, str]:
    """``{cell index: label}`` of the cells that get a progress line when they start: the first code cell of each
    ``##`` section, labelled by its heading, and each code cell before the first section.

    The functions the cell calls follow in brackets. Parameter cells (tagged ``parameters`` /
    ``injected-parameters``), import-only cells and empty cells get none.
    """
    labels: dict[int, str] = {}
    section: str | None = None
    announced = False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            heading = _section(cell.source)
            if heading:
                section, announced = heading, False
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        if (cell.cell_type != "code" or not cell.source.strip() or "parameters" in tags
                or "injected-parameters" in tags or _is_setup_cell(cell.source) or announced):
            continue
        calls = ", ".join(_calls(cell.source))
        if section is None:
            labels[index] = calls or _first_code_line(cell.source)
        else:
            labels[index] = f"{section} ({calls})" if calls else section
            announced = True
    return labels


def _clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _mode(quick: bool) -> str:
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


def _save_timing(out_dir: Path, quick: bool, run: NotebookRun) -> None:
    """Record one notebook's wall time and cell times for the next run's estimates (atomic write)."""
    from .io import write_json

    data = load_timings(out_dir)
    mode = data.get(_mode(quick))
    mode = dict(mode) if isinstance(mode, dict) else {}
    mode[run.name] = {"seconds": round(run.seconds, 1),
                      "cells": {k: round(v, 2) for k, v in run.cell_seconds.items()}}
    data[_mode(quick)] = mode
    write_json(out_dir / TIMINGS_FILE, data)


@dataclass
class _Estimate:
    """What a notebook is expected to take: its total and, when timed before, each cell (by cell id)."""

    seconds: float | None
    cells: dict[str, float] = field(default_factory=dict)
    measured: bool = False


def _estimates(names: Sequence[str], quick: bool, timings: Mapping[str, Any]) -> dict[str, _Estimate]:
    earlier = timings.get(_mode(quick))
    earlier = earlier if isinstance(earlier, Mapping) else {}
    out: dict[str, _Estimate] = {}
    for name in names:
        entry = earlier.get(name)
        if isinstance(entry, Mapping) and isinstance(entry.get("seconds"), (int, float)):
            cells = entry.get("cells")
            cells = {str(k): float(v) for k, v in cells.items() if isinstance(v, (int, float))} \
                if isinstance(cells, Mapping) else {}
            out[name] = _Estimate(float(entry["seconds"]), cells, measured=True)
        else:
            default = DEFAULT_SECONDS[_mode(quick)].get(name)
            out[name] = _Estimate(float(default) if default is not None else None)
    return out


class ProgressPrinter:
    """Prints where a run of notebooks is: one line per notebook, per step inside it and per reported line.

    Every line starts with the time since the run began and ends with an estimate of the time left in the whole
    run (the previous run's per-notebook and per-cell timings; :data:`DEFAULT_SECONDS` before the first run).
    Lines a notebook prints through :func:`report_step` are echoed; the kernel's stderr (warnings, errors,
    progress bars) is passed through to ``err`` as it arrives.
    """

    def __init__(self, estimates: Mapping[str, _Estimate], *, out: TextIO | None = None, err: TextIO | None = None,
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
        if self._name is None:
            return 0.0
        est = self.estimates.get(self._name) or _Estimate(None)
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
        message = f"[{_clock(self.clock() - self.t0)}] {text}"
        left = self.left() if estimate else None
        if left is not None:
            message += f"  (~{_clock(left)} left)"
        print(message, file=self.out, flush=True)

    # -- events ---------------------------------------------------------------------------------------------------
    def notebook_started(self, name: str, nb: Any) -> None:
        self._name, self._tag = name, name.split("_", 1)[0]
        self._cells = [str(c.get("id", i)) for i, c in enumerate(nb.cells)]
        self._cell, self._nb_t0 = None, self.clock()
        self._labels = step_labels(nb)
        if name in self.names:
            self._next = self.names.index(name)
        est = self.estimates.get(name)
        took = ""
        if est is not None and est.seconds is not None:
            took = f", {'last run' if est.measured else 'expected'} {_clock(est.seconds)}"
        self.line(f"{name} ({self._next + 1}/{len(self.names)}{took})")

    def cell_started(self, index: int) -> None:
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
        self._name, self._cell, self._pending = None, None, ""
        self._next += 1
        self.line(f"{run.name} done in {_clock(run.seconds)} -> {_display_path(run.output)}")


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies inside it (shorter lines), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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

    def executed(self, nb: Any, index: int) -> None:
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
def _kernel_config() -> Iterator[Any]:
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


def _failure(path: Path, nb: Any, index: int | None, exc: BaseException, seconds: float, output: Path,
             timeout: int) -> NotebookExecutionError:
    """The error that names the notebook, the cell and the problem, and points to the partly executed copy."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    where = "before the first cell"
    if index is not None:
        code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        label = _first_code_line(nb.cells[index].source)
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
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    nb, values = _parameterized(path, parameters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    workdir = Path(cwd) if cwd is not None else project_root(path.parent)
    env = dict(os.environ)
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"threads must be None or an integer >= 1, got {threads!r}.")
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    watch = _CellWatch(printer)
    if printer is not None:
        printer.notebook_started(path.stem, nb)
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
    seconds = time.perf_counter() - t0
    nb.metadata.setdefault("matsteer", {})["run"] = {"parameters": values, "seconds": round(seconds, 2)}
    nbformat.write(nb, str(output))
    run = NotebookRun(path.stem, path, output, values, seconds, dict(watch.seconds))
    if printer is not None:
        printer.notebook_finished(run)
    return run


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
    """Run the five notebooks in order with ``quick`` and shared ``parameters`` (each gets the ones it declares).

    only: notebook name prefixes to run (e.g. ``["01", "02"]``). talk: print progress lines (to ``out``, default
    stdout; see :class:`ProgressPrinter`). Each finished notebook's wall and cell times are kept in
    ``out_dir/timings.json`` for the next run's estimates. Returns the runs with their wall times.
    """
    folder = Path(folder) if folder is not None else notebooks_dir()
    shared = {"quick": quick, **dict(parameters or {})}
    paths = [folder / n for n in NOTEBOOKS if not only or any(n.startswith(p) for p in only)]
    # Check every notebook's values before running any, so a bad value for notebook 04 does not surface after 01-03.
    plans = []
    for path in paths:
        declared = notebook_parameters(path)
        mine = {k: v for k, v in shared.items() if k in declared}
        _check_parameters(declared, mine, path)
        plans.append((path, mine, declared))
    unused = sorted(set(shared) - {k for _, _, d in plans for k in d})
    if unused:
        raise ConfigError(f"No selected notebook declares the parameter(s) {unused}; see each notebook's parameters "
                          "cell.")
    # Full mode runs the whole comparison in notebook 04's one cell (about 20 minutes on 2 cores).
    timeout = timeout if timeout is not None else (900 if quick else 7200)
    out_dir = Path(out_dir)
    printer = None
    if talk:
        printer = ProgressPrinter(_estimates([p.stem for p, _, _ in plans], quick, load_timings(out_dir)), out=out)
    runs = []
    for path, mine, _ in plans:
        run = run_notebook(path, mine, out_dir, timeout, cwd=cwd, threads=threads, printer=printer)
        _save_timing(out_dir, quick, run)
        runs.append(run)
    return runs


# --------------------------------------------------------------------------------------------------------------
# The summary at the end of a run
# --------------------------------------------------------------------------------------------------------------

#: Preferred primary metric per task when a report does not name one (first found wins).
_PRIMARY_METRICS = ("mc2", "preference", "balanced", "balanced_accuracy", "accuracy")


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


def _comparison_rows(report: Any) -> tuple[list[str], list[tuple[str, dict[str, float | None]]]]:
    """(columns, rows) of a comparison report, read defensively: any top-level mapping of entries that carry a
    ``test`` mapping counts as rows (the methods, and any reference or control rows kept beside them)."""
    if not isinstance(report, Mapping):
        return [], []
    hints = report.get("primary") if isinstance(report.get("primary"), Mapping) else {}
    columns: list[str] = []
    rows: list[tuple[str, dict[str, float | None]]] = []
    from .experiments import in_table_order

    groups = [report.get("methods")] + [v for k, v in report.items() if k != "methods"]
    for group in groups:
        if not isinstance(group, Mapping):
            continue
        for key, entry in in_table_order(group):  # eval.json keys are sorted; show the comparison's order
            test = entry.get("test") if isinstance(entry, Mapping) else None
            if not isinstance(test, Mapping):
                continue
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
            rows.append((str(entry.get("label") or key), row))
    return (columns + ["mean", "KL"] if rows else []), rows


def _format_table(columns: Sequence[str], rows: Sequence[tuple[str, Mapping[str, float | None]]]) -> str:
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


def _folders(parameters: Mapping[str, Any], paths: Sequence[Path]) -> dict[str, Path]:
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
            found[name] = _resolve(value)
    return found


def _summary(runs: Sequence[NotebookRun], folders: Mapping[str, Path], out_dir: Path, seconds: float) -> str:
    lines = ["", f"Done: {len(runs)} notebook(s) in {_clock(seconds)} wall time."]
    results = folders.get("results_dir")
    table = comparison_summary(results) if results is not None else None
    if table:
        lines += ["", f"Method comparison (test, %; KL in nats; full table with intervals: "
                      f"{_display_path(results / 'eval.md')}):", table]
    lines += ["", f"  executed notebooks  {_display_path(out_dir)}/"]
    where = {"figures_dir": "figures", "steerer_dir": "steerer", "results_dir": "tables (eval.json, eval.md)",
             "features_dir": "features"}
    for key, label in where.items():
        if key in folders and folders[key].exists():
            lines.append(f"  {label:<18}  {_display_path(folders[key])}/")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The project's Jupyter kernel
# --------------------------------------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matsteer.notebooks", description="Run the workbench notebooks.")
    parser.add_argument("--full", action="store_true", help="full limits instead of quick mode")
    parser.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 01 02")
    parser.add_argument("--out", default="build/notebooks", help="folder for executed copies")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per kernel (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=LITERAL",
                        help="extra parameters, e.g. layer=10 steerer_dir='\"results/x\"'")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    parser.add_argument("--install-kernel", action="store_true",
                        help=f"register this environment's Jupyter kernel {KERNEL_NAME!r} and exit (make lab)")
    args = parser.parse_args(argv)
    if args.install_kernel:
        print(f"Jupyter kernel {KERNEL_NAME!r} -> {install_kernel()}")
        return 0
    extra = {}
    for item in args.set:
        name, _, literal = item.partition("=")
        try:
            extra[name] = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            extra[name] = literal  # a bare string
    t0 = time.perf_counter()
    try:
        runs = run_all(quick=not args.full, out_dir=args.out, parameters=extra, only=args.only,
                       threads=args.threads, talk=not args.quiet)
    except MatSteerError as exc:
        print(f"\nerror: {exc}\n\nStopped after {_clock(time.perf_counter() - t0)}.", file=sys.stderr)
        return 2
    folder = notebooks_dir()
    paths = [folder / n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    print(_summary(runs, _folders(extra, paths), Path(args.out), time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

