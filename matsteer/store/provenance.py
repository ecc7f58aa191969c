"""Provenance: what a result was made from (model, data files, splits, seeds, libraries, code version).

Everything here is deterministic for identical inputs on one machine and checkout (no timestamps, no host names,
no absolute paths), so a steerer manifest that embeds :func:`collect` stays byte-identical across re-runs.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from matsteer.data import DATASETS, HUB_IDS, SOURCE_FILES, TRUTHFULQA_CSV, default_data_dir
from matsteer.errors import ConfigError
from matsteer.files import sha256_file, source_root

_GIT_TIMEOUT_S = 10


def _source_root() -> Path:
    """The folder holding the ``matsteer`` package (the repository root in a source checkout)."""
    return source_root()


def _git(root: Path, *args: str) -> str:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock (others may be using this checkout).
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
                         check=True, env=env)
    return out.stdout.strip()


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the checkout matsteer runs from, ``"<sha>+dirty"`` if tracked files are modified.

    path: a folder inside the repository to ask about (default: the folder holding the ``matsteer`` package).
    None when that folder is not the top of a git work tree (e.g. matsteer installed into a virtualenv that
    happens to sit inside some repository, whose commit would say nothing about the installed code), or when
    git is missing or fails. Untracked files do not make a checkout dirty.
    """
    root = Path(path).resolve() if path is not None else _source_root()
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel")).resolve()
        if path is None and top != root:
            return None
        sha = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def _hash_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def data_hashes(datasets: Iterable[str], *, data_dir: str | Path | None = None) -> dict[str, dict[str, str | None]]:
    """sha256 of every file each named data set reads: its source files and its saved split file.

    Returns ``{dataset: {path relative to the data folder: sha256 or None}}``; None marks a file that is not
    there (a missing split file means the split is computed afresh; a missing source file makes loading fail
    anyway). Hub-only data sets (HelpSteer) read no local file: ``{"hub:<id>": None}``. Unknown names raise
    :class:`ConfigError`.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    out: dict[str, dict[str, str | None]] = {}
    for name in datasets:
        if name not in DATASETS:
            raise ConfigError(f"Unknown dataset {name!r} for provenance; valid choices: {', '.join(DATASETS)}.")
        if name not in SOURCE_FILES:
            out[name] = {f"hub:{HUB_IDS[name]}": None}
            continue
        # TruthfulQA also reads the CSV for each question's category and source (shipped files only).
        files = [*SOURCE_FILES[name], *([TRUTHFULQA_CSV] if name == "truthfulqa" else []), split_file(name)]
        out[name] = {rel: _hash_or_none(root / rel) for rel in files}
    return out


def split_file(dataset: str) -> str:
    """Where a shipped data set's saved split lives, relative to the data folder."""
    return f"splits/{dataset}.json"


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo (else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment() -> dict[str, str]:
    """The Python and platform a result was made on."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "byteorder": sys.byteorder,
    }


def collect(
    *,
    model_name: str,
    model_hash: str | None,
    datasets: Iterable[str],
    seeds: Mapping[str, int] | Sequence[int],
    extra: Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
    commit: str | None = None,
) -> dict[str, Any]:
    """One provenance record for a result file.

    commit: the git commit to record (default: :func:`git_commit` now); a long run passes the one it started
    from, since the checkout may change while it runs.

    Keys: ``model`` {name, hash}, ``data`` (:func:`data_hashes`), ``split_files`` {dataset: relative path of
    its saved split, or None for hub-only sets}, ``seeds`` (as given: a mapping such as ``{"train": 0}`` or a
    list), ``libraries`` (:func:`matsteer.store.provenance.library_versions`), ``environment`` (:func:`environment`),
    ``git_commit`` (:func:`git_commit`) and ``extra`` (as given). JSON-serialisable; no timestamps.
    """
    names = sorted(set(datasets))
    seed_record: dict[str, int] | list[int] = (
        {str(k): int(v) for k, v in seeds.items()} if isinstance(seeds, Mapping) else [int(s) for s in seeds]
    )
    return {
        "model": {"name": str(model_name), "hash": None if model_hash is None else str(model_hash)},
        "data": data_hashes(names, data_dir=data_dir),
        "split_files": {n: split_file(n) if n in SOURCE_FILES else None for n in names},
        "seeds": seed_record,
        "libraries": library_versions(),
        "environment": environment(),
        "git_commit": commit if commit is not None else git_commit(),
        "extra": dict(extra) if extra is not None else {},
    }


def datasets_in(info: Any) -> list[str]:
    """Data set names found under ``"dataset"`` keys anywhere in a nested mapping/list (e.g. a steerer's
    ``data_info``), sorted and de-duplicated; names matsteer does not know are left out."""

    found: set[str] = set()
    stack = [info]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            value = item.get("dataset")
            if isinstance(value, str) and value in DATASETS:
                found.add(value)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sorted(found)


_LIBRARIES = ("torch", "transformers", "pyvene", "safetensors", "matsteer")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that matter for reproducing a steerer (None if not installed)."""
    out: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out
