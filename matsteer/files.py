"""Atomic file writes and content hashes: nothing half-written is ever read back."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from matsteer.errors import ArtifactError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically (byte-identical for equal inputs)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read JSON, raising :class:`ArtifactError` that names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}. Check the path, or re-create it.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{what} {path} is not valid JSON ({exc}). Delete it and re-create it.") from exc


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors with safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def read_tensors(path: str | Path, what: str = "tensor file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file (never pickle) and its metadata; :class:`ArtifactError` names the file on failure."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}. Check the path, or re-create it.")
    try:
        with safe_open(str(path), "pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{what} {path} is truncated or corrupted ({exc}). Delete it and re-create it.") from exc


def source_root() -> Path:
    """The folder holding the ``matsteer`` package: the repository root in a source checkout."""
    return Path(__file__).resolve().parent.parent


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


# Work folders of a folder write sit beside the target as ``.<name>.<pid>.<8 random chars><suffix>``: ``.tmp`` while the new
# folder is written, ``.old`` for the previous folder while it is swapped out. The pid lets a later run tell the
# leftovers of a killed process from the work of a live one.
_TMP, _OLD = ".tmp", ".old"


def _work_dir(path: Path, suffix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; or not a pid at all: leave it alone
        return True
    return True


def _orphans(path: Path, suffix: str) -> list[Path]:
    """Work folders of ``path`` (with ``suffix``) left by processes that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}{re.escape(suffix)}$")
    if not path.parent.is_dir():
        return []
    found = []
    for entry in sorted(path.parent.iterdir()):
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not _pid_alive(int(m.group(1))):
            found.append(entry)
    return found


def recover_interrupted_folder(path: str | Path, is_whole: Callable[[Path], bool]) -> bool:
    """Finish what a killed :func:`atomic_folder` left behind at ``path``; True if a previous folder was restored.

    A write killed while swapping folders can leave the target missing and the previous folder in a ``.old``
    folder: it is moved back when ``is_whole(old)`` says it is complete (nothing is lost). Other leftovers of dead
    processes (``.tmp`` folders never renamed into place, ``.old`` folders whose replacement did land) are removed.
    Work folders of live processes are left alone.
    """
    path = Path(path)
    restored = False
    for old in _orphans(path, _OLD):
        if not path.exists() and is_whole(old):
            try:
                os.replace(old, path)
                restored = True
                continue
            except OSError:  # read-only folder, or another process restored it first
                pass
        shutil.rmtree(old, ignore_errors=True)
    for tmp in _orphans(path, _TMP):
        shutil.rmtree(tmp, ignore_errors=True)
    return restored


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty work folder beside ``path``; when the block succeeds it becomes ``path``.

    An existing ``path`` is moved aside first and restored if the rename fails, so the target is never half
    written (the caller decides beforehand whether it may be replaced). ``keep_existing``: if ``path`` exists when
    the block ends (another process won a race), it is kept and the new folder dropped. On an exception nothing
    at ``path`` changes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _work_dir(path, _TMP)
    backup: Path | None = None
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700
        if path.exists() and keep_existing:
            return
        if path.exists():
            backup = _work_dir(path, _OLD)
            os.rmdir(backup)
            os.replace(path, backup)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(backup, path)
                backup = None
                raise
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if backup is not None and backup.exists():
            shutil.rmtree(backup, ignore_errors=True)


def read_folder_manifest(path: str | Path, *, kind: str, format_version: int, what: str, writer: str,
                         is_whole: Callable[[Path], bool]) -> dict[str, Any]:
    """The ``manifest.json`` of a saved folder (a steerer's, an adapter's...) (an interrupted save recovered first), checked for its ``kind`` and
    a ``format_version`` this matsteer reads (:class:`ArtifactError` naming the fix). what: the folder's name in
    messages ("LoRA adapter"); writer: the function that writes such folders."""
    path = Path(path)
    recover_interrupted_folder(path, is_whole)
    if not path.is_dir():
        raise ArtifactError(f"{what} folder not found: {path}. Check the path, or train and save it again.")
    manifest = read_json(path / "manifest.json", f"{what} manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        raise ArtifactError(f"{path / 'manifest.json'} is not a matsteer {what} manifest (kind {kind!r}); pass a folder "
                            f"written by {writer}.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > format_version:
        raise ArtifactError(f"{path} has {what} format_version {version!r}, newer than this matsteer's "
                            f"({format_version}). Upgrade matsteer to load it.")
    return manifest


def check_trained_on(path: str | Path, manifest: dict[str, Any], name: str, weight_hash: str,
                     allow_mismatch: bool = False) -> None:
    """Refuse (:class:`ArtifactError`) a saved folder whose manifest's ``base_model`` is not the model
    ``name`` / ``weight_hash`` it is about to be used with, unless ``allow_mismatch``."""
    base = manifest.get("base_model") or {}
    if base.get("weight_hash") != weight_hash and not allow_mismatch:
        raise ArtifactError(f"{path} was trained on {base.get('name')!r} (weight hash "
                            f"{str(base.get('weight_hash'))[:12]}...), not on {name!r} ({weight_hash[:12]}...). "
                            "Load the model it was trained on, or pass allow_model_mismatch=True.")


def read_manifest_tensors(path: str | Path, manifest: dict[str, Any], filename: str, what: str,
                          fix: str) -> dict[str, Any]:
    """The safetensors file ``filename`` of a saved folder, checked against the sha256 its manifest records
    (:class:`ArtifactError` ending in ``fix`` when the file was modified)."""
    weights = Path(path) / filename
    expected = (manifest.get("tensors") or {}).get("sha256")
    if weights.is_file() and expected is not None and sha256_file(weights) != expected:
        raise ArtifactError(f"{weights} does not match the sha256 in {Path(path) / 'manifest.json'}: the file was "
                            f"modified or is corrupted. {fix}")
    tensors, _ = read_tensors(weights, what)
    return tensors
