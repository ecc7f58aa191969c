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

Command line: ``python -m matsteer.notebooks [--full] [--only 01 03] [--out build/notebooks]``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, MatSteerError
from .pipeline import DemoConfig, feature_dir
from .sites import Site
from .train import TrainConfig

__all__ = [
    "NOTEBOOKS",
    "QUICK",
    "NotebookExecutionError",
    "NotebookRun",
    "Parameter",
    "Workbench",
    "feature_table",
    "kernel_scale_table",
    "loss_table",
    "notebook_parameters",
    "notebooks_dir",
    "parameterize_notebook",
    "project_root",
    "quick_evaluation",
    "run_all",
    "run_notebook",
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
    sigma: float | str = "median",
    loss_variant: str = "paper",
    site: str = "residual",
) -> Workbench:
    """Build the shared settings from a notebook's parameters (relative folders are under the project root).

    quick: small data limits (:data:`QUICK`), ``epochs`` default 5 instead of 100, short generations.
    sigma: the kernel width, a number or ``"median"`` (σ = 2 is far too small for raw activations; see
    ``docs/losses.md`` and the kernel scale table of notebook 01).
    """
    base = DemoConfig()
    epochs = epochs if epochs is not None else (QUICK["epochs"] if quick else base.train.epochs)
    train = TrainConfig(**{**base.train.to_dict(), "epochs": epochs, "sigma": sigma, "seed": seed,
                           "loss_variant": loss_variant})
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


def quick_evaluation(wb: Workbench, *, progress: bool = False) -> dict[str, Any]:
    """Run the method comparison (:func:`matsteer.experiments.run_evaluation`) at the notebook's settings.

    Quick mode: one seed, one multiplier, the notebook's training setting, few questions, a short bootstrap.
    Features are shared with notebooks 01/02 (same folders and limits). Writes ``eval.json`` / ``eval.md`` under
    ``wb.results_dir`` and returns the report.
    """
    from .experiments import EvalConfig, run_evaluation

    cfg = EvalConfig(demo=copy.deepcopy(wb.demo), out_dir=Path(wb.results_dir))
    if wb.quick:
        cfg.seeds, cfg.multipliers, cfg.iti_alphas, cfg.icl_shots = (wb.seed,), (1.0,), (1.0,), (1,)
        cfg.dev_limits, cfg.test_limits = dict(wb.eval_limits), dict(wb.eval_limits)
        cfg.training_candidates, cfg.n_boot = ({},), 200
    return run_evaluation(cfg, progress=progress)


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
    """One executed notebook: where it came from and went, its parameters and wall time."""

    name: str
    source: Path
    output: Path
    parameters: dict[str, Any]
    seconds: float


def run_notebook(
    path: str | Path,
    parameters: Mapping[str, Any] | None = None,
    out_dir: str | Path = "build/notebooks",
    timeout: int = 600,
    *,
    cwd: str | Path | None = None,
    kernel_name: str = "python3",
    threads: int | None = None,
) -> NotebookRun:
    """Execute a notebook headless with ``parameters`` and save the executed copy as ``out_dir/<name>``.

    parameters: checked against the notebook's ``parameters`` cell (unknown name or wrong type -> ConfigError,
    before any kernel starts) and injected in a cell right after it. timeout: seconds per cell.
    cwd: the kernel's working directory (default: the project root). threads: CPU threads for the kernel's
    torch/BLAS (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``); on a shared 2-core machine, 1 thread avoids the
    many-fold slowdown of OpenMP threads waiting on a busy core. On a failing cell the partly executed copy is
    still written, then :class:`NotebookExecutionError` is raised.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    nb, values = _parameterized(path, parameters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    workdir = Path(cwd) if cwd is not None else project_root(path.parent)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(workdir)}})
    env = dict(os.environ)
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"threads must be None or an integer >= 1, got {threads!r}.")
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        nbformat.write(nb, str(output))
        first = str(exc).strip().splitlines()
        raise NotebookExecutionError(
            f"{path.name} failed after {time.perf_counter() - t0:.0f} s; the executed copy is {output}.\n"
            + "\n".join(first[-25:])
        ) from exc
    seconds = time.perf_counter() - t0
    nb.metadata.setdefault("matsteer", {})["run"] = {"parameters": values, "seconds": round(seconds, 2)}
    nbformat.write(nb, str(output))
    return NotebookRun(path.stem, path, output, values, seconds)


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
) -> list[NotebookRun]:
    """Run the five notebooks in order with ``quick`` and shared ``parameters`` (each gets the ones it declares).

    only: notebook name prefixes to run (e.g. ``["01", "02"]``). Returns the runs with their wall times.
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
    return [run_notebook(path, mine, out_dir, timeout, cwd=cwd, threads=threads) for path, mine, _ in plans]


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
    args = parser.parse_args(argv)
    extra = {}
    for item in args.set:
        name, _, literal = item.partition("=")
        try:
            extra[name] = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            extra[name] = literal  # a bare string
    try:
        for run in run_all(quick=not args.full, out_dir=args.out, parameters=extra, only=args.only,
                           threads=args.threads):
            print(f"{run.name}: {run.seconds:.1f} s -> {run.output}")
    except MatSteerError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

