"""Reading data files (text, JSON lines, JSON, CSV/TSV, parquet); each problem is a DataError with a fix."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matsteer.data.registry import SOURCE_FILES, TRUTHFULQA_CSV
from matsteer.errors import DataError
from matsteer.files import source_root

Row = tuple[str, dict[str, Any]]  # (location such as "line 12", record)

RESTORE_FIX = (
    "restore the shipped copy (`git checkout -- data/`) or see data/README.md for the upstream source"
)
# A user's own file (source=...): restoring data/ would not help.
OWN_FILE_FIX = "correct the file at that place (or pass another file), or leave source unset to use the files in data/"


def data_error(path: Path | str, where: str | None, problem: str, fix: str | None = None) -> DataError:
    """A DataError naming the file and location; the default fix depends on whose file it is."""
    loc = f"{path}, {where}" if where else f"{path}"
    if fix is None:
        fix = RESTORE_FIX if _is_shipped(path) else OWN_FILE_FIX
    return DataError(f"{loc}: {problem}. Fix: {fix}.")


def _is_shipped(path: Path | str) -> bool:
    """Whether ``path`` is one of the shipped files (in any data folder): restoring that copy is then the fix."""
    if isinstance(path, str) and path.startswith("hub:"):
        return False
    posix = Path(path).as_posix()
    shipped = [*(rel for rels in SOURCE_FILES.values() for rel in rels), TRUTHFULQA_CSV,
               *(f"splits/{name}.json" for name in SOURCE_FILES)]
    return any(posix == rel or posix.endswith("/" + rel) for rel in shipped)


def default_data_dir() -> Path:
    """``$MATSTEER_DATA_DIR`` if set, else the repository's ``data/`` folder."""
    env = os.environ.get("MATSTEER_DATA_DIR")
    return Path(env) if env else source_root() / "data"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` (default :func:`default_data_dir`) as a Path, refusing a folder that does not exist."""
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    if not path.is_dir():
        raise DataError(
            f"data directory {path} not found. Fix: pass data_dir=... (the folder holding truthfulqa/, "
            "toxigen/, bbq/ ...) or set MATSTEER_DATA_DIR."
        )
    return path


def _read_text(path: Path) -> str:
    """Whole file as text (``.gz`` transparently; UTF-8, BOM dropped), refusing missing or empty files."""
    if not path.is_file():
        raise data_error(path, None, "file not found")
    if path.stat().st_size == 0:
        raise data_error(path, None, "file is empty")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise data_error(path, None, f"not a readable gzip file ({exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise data_error(path, f"line {line}", f"not valid UTF-8 ({exc.reason})") from exc
    if not text.strip():
        raise data_error(path, None, "file is empty")
    return text


def base_suffix(path: Path) -> str:
    """The format suffix, ignoring a trailing ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_jsonl_text(path: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise data_error(path, f"line {lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise data_error(path, f"line {lineno}", f"expected a JSON object, got {type(obj).__name__}")
        rows.append((f"line {lineno}", obj))
    return rows


def _read_json_rows(path: Path) -> list[Row]:
    """A JSON list of objects, or JSON lines (what ``datasets``' ``to_json`` writes, even as ``.json``)."""
    text = _read_text(path)
    if text.lstrip()[:1] != "[":
        rows = _read_jsonl_text(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise data_error(
                path, f"line {exc.lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        rows = []
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise data_error(path, f"entry {i}", f"expected a JSON object, got {type(obj).__name__}")
            rows.append((f"entry {i}", obj))
    if not rows:
        raise data_error(path, None, "no records in file")
    return rows


def read_delimited(path: Path, delimiter: str, required: Sequence[str]) -> list[Row]:
    """CSV/TSV with a header; quoted multi-line fields are allowed (the location is the record's first line)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise data_error(path, "line 1", f"unreadable header ({exc})") from exc
    missing = [col for col in required if col not in header]
    if missing:
        raise data_error(path, "line 1", f"header lacks column(s) {missing} (found {header})")
    rows: list[Row] = []
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise data_error(path, f"line {start}", f"malformed record ({exc})") from exc
        if not values:
            continue
        if len(values) != len(header):
            raise data_error(path, f"line {start}", f"expected {len(header)} fields, found {len(values)}")
        rows.append((f"line {start}", dict(zip(header, values))))
    if not rows:
        raise data_error(path, None, "no records after the header")
    return rows


def _read_parquet(path: Path) -> list[Row]:
    if not path.is_file():
        raise data_error(path, None, "file not found")
    try:
        import datasets

        table = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as exc:  # any reader failure means the same to the user: a bad file
        raise data_error(path, None, f"not a readable parquet file ({type(exc).__name__}: {exc})") from exc
    rows = [(f"row {i}", dict(rec)) for i, rec in enumerate(table)]
    if not rows:
        raise data_error(path, None, "no records in file")
    return rows


def read_table(path: Path, required: Sequence[str] = ()) -> list[Row]:
    """Rows from a local .json/.jsonl/.csv/.tsv/.parquet file (``.gz`` allowed except for parquet)."""
    suffix = base_suffix(path)
    if suffix in (".json", ".jsonl"):
        rows = _read_json_rows(path)
    elif suffix in (".csv", ".tsv"):
        return read_delimited(path, "\t" if suffix == ".tsv" else ",", required)
    elif suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise data_error(
            path, None, f"unknown file type {suffix!r}", "pass a .json, .jsonl, .csv, .tsv or .parquet file"
        )
    for where, rec in rows:
        missing = [key for key in required if key not in rec]
        if missing:
            raise data_error(path, where, f"record lacks field(s) {missing}")
    return rows


# --------------------------------------------------------------------------------------------------
# Fields of one record
# --------------------------------------------------------------------------------------------------


def text_field(rec: Mapping[str, Any], key: str, path: Path | str, where: str) -> str:
    """A required, non-blank string field."""
    value = rec.get(key)
    if not isinstance(value, str):
        raise data_error(path, where, f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise data_error(path, where, f"field {key!r} is empty")
    return value


def score_field(
    rec: Mapping[str, Any], key: str, path: Path | str, where: str, lo: float, hi: float
) -> float:
    """A required number field within [lo, hi] (numeric strings accepted)."""
    value = rec.get(key)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise data_error(path, where, f"field {key!r} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise data_error(path, where, f"field {key!r} = {value!r} is outside [{lo:g}, {hi:g}]")
    return number
