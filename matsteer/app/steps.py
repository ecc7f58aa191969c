"""Which cells of a notebook a talking headless run announces, and how: step labels from headings and calls."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbformat import NotebookNode

__all__ = ["step_labels"]

_MAGIC = re.compile(r"^\s*[%!]")


def _section(source: str) -> str | None:
    """The text of a markdown cell's first ``##``-or-deeper heading (``#`` is the notebook's title)."""
    for line in source.splitlines():
        match = re.match(r"^(#{2,6})\s+(.*\S)", line)
        if match:
            return match.group(2)
    return None


def first_code_line(source: str, width: int = 72) -> str:
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


# globals: the notebooks' ``workbench(globals())``, which says nothing about the step.
_TRIVIAL_CALLS = frozenset({"print", "len", "str", "int", "float", "list", "dict", "tuple", "sorted", "zip", "range",
                            "enumerate", "join", "items", "keys", "values", "format", "Site", "Path", "globals"})


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


def step_labels(nb: NotebookNode) -> dict[int, str]:
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
            labels[index] = calls or first_code_line(cell.source)
        else:
            labels[index] = f"{section} ({calls})" if calls else section
            announced = True
    return labels
