"""A notebook's ``parameters`` cell: reading its names, defaults and types, checking new values, injecting them.

Each notebook has one cell tagged ``parameters`` with plain assignments (optionally annotated, e.g.
``epochs: int | None = None``). New values are checked against it (an unknown name or a wrong type raises
:class:`~matsteer.errors.ConfigError` naming the parameter) and injected in a cell right after it, tagged
``injected-parameters`` as papermill does.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matsteer.errors import ConfigError

if TYPE_CHECKING:
    from nbformat import NotebookNode

__all__ = ["Parameter", "notebook_parameters", "parameterize_notebook"]

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


def _parameters_cell(nb: NotebookNode, path: str | Path) -> tuple[int, NotebookNode]:
    """The index and the cell tagged ``parameters``; exactly one is required."""
    found = [(i, c) for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        raise ConfigError(f"{path} must have exactly one cell tagged 'parameters', found {len(found)}.")
    return found[0]


def _assignment(node: ast.stmt, path: str | Path) -> tuple[str, ast.expr, ast.expr | None]:
    """(name, value, annotation) of one ``name = literal`` or ``name: type = literal`` statement."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value, None
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id, node.value, node.annotation
    raise ConfigError(f"The parameters cell of {path} may hold only `name = literal` assignments; "
                      f"found {ast.unparse(node)!r}.")


def _parse_parameters(source: str, path: str | Path) -> dict[str, Parameter]:
    """The parameters a cell's ``source`` declares, in order (defaults must be literals)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"The parameters cell of {path} is not valid Python: {exc}.") from exc
    params: dict[str, Parameter] = {}
    for node in tree.body:
        name, value_node, ann = _assignment(node, path)
        try:
            default = ast.literal_eval(value_node)
        except ValueError as exc:
            raise ConfigError(f"Parameter {name!r} in {path} needs a literal default, got {ast.unparse(value_node)!r}.") from exc
        types_: tuple[type, ...] | None
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


def check_parameters(declared: Mapping[str, Parameter], values: Mapping[str, Any], path: str | Path
                      ) -> dict[str, Any]:
    """``values`` checked against the ``declared`` parameters: known names, fitting types, plain literals."""
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


def parameterized(path: Path, parameters: Mapping[str, Any] | None) -> tuple[NotebookNode, dict[str, Any]]:
    """The notebook with an ``injected-parameters`` cell after its parameters cell, and the checked values."""
    import nbformat

    if not path.is_file():
        raise ConfigError(f"Notebook {path} not found.")
    nb = nbformat.read(str(path), as_version=4)
    index, cell = _parameters_cell(nb, path)
    values = check_parameters(_parse_parameters(cell.source, path), dict(parameters or {}), path)
    if values:
        lines = ["# Parameters injected by matsteer.app.notebooks"]
        lines += [f"{k} = {v!r}" for k, v in values.items()]
        injected = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(index + 1, injected)
    return nb, values


def parameterize_notebook(path: str | Path, parameters: Mapping[str, Any], out: str | Path) -> Path:
    """Write a copy of a notebook with ``parameters`` injected (checked as in
    :func:`~matsteer.app.runner.run_notebook`), unexecuted.

    For opening a parameterised copy in JupyterLab. ``out``: the file to write (its folder is created).
    """
    import nbformat

    nb, _ = parameterized(Path(path), parameters)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    return out
