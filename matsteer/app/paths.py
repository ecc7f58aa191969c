"""Where the notebooks' folders are: the project root, ``notebooks/``, relative folders and paths for messages."""

from __future__ import annotations

import os
from pathlib import Path

from matsteer.files import source_root


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
    return source_root() / "notebooks"


def resolve_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded; a relative one is taken under the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies inside it (shorter lines), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
