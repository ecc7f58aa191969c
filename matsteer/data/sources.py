"""Where a data set is read from (the shipped files, local paths, or a hub id), and its rows from there."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsteer.data.readers import Row, base_suffix, data_error, read_table, resolve_data_dir
from matsteer.data.registry import HELPSTEER_DATASETS, HUB_CONFIG, HUB_IDS, SOURCE_FILES
from matsteer.errors import ConfigError, DataError

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_TABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".gz")


def hub_rows(hub_id: str, config: str | None, split: str) -> list[Row]:
    """Rows of a hub data set; any failure (offline, gated, unknown id) becomes one clear DataError."""
    if any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in _OFFLINE_VARS):
        # Fail at once instead of after the hub client's retries.
        raise DataError(
            f"cannot load {hub_id!r} from the Hugging Face hub: offline mode is set "
            f"({'/'.join(_OFFLINE_VARS)}): no network to the hub; use the files in data/ or pass a local "
            "path (source=...)."
        )
    try:
        import datasets

        table = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, auth and offline-mode errors all mean the same to the user
        raise DataError(
            f"could not load {hub_id!r} (config {config!r}, split {split!r}) from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}): no network to the hub; use the files in data/ or pass a "
            "local path (source=...)."
        ) from exc
    return [(f"row {i}", dict(rec)) for i, rec in enumerate(table)]


@dataclass(frozen=True)
class Source:
    """Where a data set is read from: the shipped files, local path(s), or a hub id."""

    kind: str  # "shipped" | "path" | "hub"
    paths: tuple[Path, ...] = ()
    hub_id: str = ""

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever the underlying files change (cache key)."""
        if self.kind == "hub":
            return (self.hub_id,)
        out: list[Any] = []
        for p in self.paths:
            st = p.stat() if p.exists() else None
            out.append((str(p.resolve()), st.st_mtime_ns if st else -1, st.st_size if st else -1))
        return tuple(out)


def folder_source(path: Path) -> Source:
    """A folder: every table in it (BBQ ships one file per category)."""
    files = tuple(sorted(p for p in path.iterdir() if p.is_file() and base_suffix(p) in _TABLE_SUFFIXES))
    if not files:
        raise data_error(
            path, None, "folder holds no .json/.jsonl/.csv/.tsv/.parquet files", "pass a data file"
        )
    return Source("path", paths=files)


def resolve_source(dataset: str, source: str | Path | None, data_dir: str | Path | None) -> Source:
    """Where to read ``dataset`` from: ``source`` (a local file or folder, or a hub id) or the shipped files.

    With ``source`` None HelpSteer data sets use their default hub id, the others the files in ``data_dir``.
    """
    if source is None:
        if dataset in HELPSTEER_DATASETS:
            return Source("hub", hub_id=HUB_IDS[dataset])
        root = resolve_data_dir(data_dir)
        return Source("shipped", paths=tuple(root / rel for rel in SOURCE_FILES[dataset]))
    path = Path(source)
    if path.exists():
        return folder_source(path) if path.is_dir() else Source("path", paths=(path,))
    text = str(source)
    if _HUB_ID_RE.fullmatch(text) and not text.lower().endswith(_TABLE_SUFFIXES):
        if dataset not in HUB_IDS:
            raise ConfigError(
                f"{dataset} cannot be read from the hub here; pass a local file path, or leave source unset "
                f"to use the files in data/ (hub ids are supported for {sorted(HUB_IDS)})"
            )
        return Source("hub", hub_id=text)
    raise data_error(
        path, None, "file not found", "check the path, or leave source unset to use the files in data/"
    )


def rows_of(dataset: str, src: Source, required: Sequence[str] = ()) -> list[tuple[Path | str, list[Row]]]:
    """``(path, rows)`` per file of ``src`` (one ``hub:{id}`` entry for a hub id); checks ``required`` fields."""
    if src.kind == "hub":
        config, split = HUB_CONFIG.get(dataset, (None, "train"))
        rows = hub_rows(src.hub_id, config, split)
        for where, rec in rows:
            missing = [key for key in required if key not in rec]
            if missing:
                raise data_error(
                    f"hub:{src.hub_id}", where, f"record lacks field(s) {missing}", "pass a matching data set"
                )
        return [(f"hub:{src.hub_id}", rows)]
    return [(path, read_table(path, required)) for path in src.paths]
