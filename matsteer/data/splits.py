"""Deterministic train/dev/test splits by group, and the saved split files in ``data/splits``."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matsteer.data.parsers import parse
from matsteer.data.readers import data_error, resolve_data_dir
from matsteer.data.records import Example
from matsteer.data.registry import (
    HELPSTEER_DATASETS,
    PARTS,
    SHIPPED_DATASETS,
    SOURCE_FILES,
    SPLIT_FORMAT,
    SPLIT_FRACTIONS,
    DataWarning,
    check_dataset,
)
from matsteer.data.sources import Source, resolve_source
from matsteer.errors import ConfigError
from matsteer.files import sha256_file, write_json

_SPLIT_METHOD = {
    "truthfulqa": "random by question (group), cut at rounded fractions",
    "toxigen": "random by row, stratified by (target_group, toxic under the 5.5 rule)",
    "bbq": "by template (category, question_index), stratified by category, greedy to example fractions",
    "hh_rlhf": "random by preference pair",
    "paradetox": "random by row (toxic sentence with its paraphrases)",
}
_REGENERATE_FIX = "regenerate it with matsteer.data.make_splits()"


# --------------------------------------------------------------------------------------------------
# Computing a split
# --------------------------------------------------------------------------------------------------


def rank_key(salt: str, seed: int, unit: str) -> str:
    """A seeded, platform-independent shuffle key (no dependence on Python's RNG or hash seed)."""
    return hashlib.sha256(f"{salt}\x00{seed}\x00{unit}".encode()).hexdigest()


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def cut(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    """Sizes of train and dev for ``n`` items (test takes the rest); e.g. 817 -> 327/82/408 at 40/10/50."""
    n_train = min(n, _round_half_up(n * fractions[0]))
    n_dev = min(n - n_train, _round_half_up(n * fractions[1]))
    return n_train, n_dev


def assign_units(
    units: Sequence[str],
    weights: Mapping[str, int] | None,
    fractions: Sequence[float],
    seed: int,
    salt: str,
) -> dict[str, str]:
    """Assign split units (within one stratum) to train/dev/test.

    Unweighted: shuffle by seeded hash and cut at the rounded fractions. Weighted (units of unequal size,
    e.g. BBQ templates): walk the shuffled units and give each to the split furthest below its target
    share of the total weight, so the *example* fractions come out close to the targets.
    """
    order = sorted(units, key=lambda u: rank_key(salt, seed, u))
    out: dict[str, str] = {}
    if weights is None:
        n_train, n_dev = cut(len(order), fractions)
        for pos, unit in enumerate(order):
            out[unit] = "train" if pos < n_train else "dev" if pos < n_train + n_dev else "test"
        return out
    total = sum(weights[u] for u in order)
    targets = [total * f for f in fractions]
    got = [0.0, 0.0, 0.0]
    for unit in order:
        part = max(range(3), key=lambda j: (targets[j] - got[j], -j))
        got[part] += weights[unit]
        out[unit] = PARTS[part]
    return out


def _split_units(dataset: str, examples: Sequence[Example]) -> tuple[dict[str, str], dict[str, str], bool]:
    """(group -> unit, unit -> stratum, weighted?) for a data set.

    TruthfulQA / HH-RLHF / ParaDetox: one unit per group. ToxiGen: per row, stratified by target group and
    toxicity. BBQ: one unit per template (category, question_index), stratified by category, so templated
    near-duplicates never straddle splits.
    """
    unit_of: dict[str, str] = {}
    stratum_of: dict[str, str] = {}
    for ex in examples:
        if ex.group in unit_of:
            continue
        if dataset == "bbq":
            unit = f"{ex.meta['category']}|{ex.meta['question_index']}"
            stratum = ex.meta["category"]
        elif dataset == "toxigen":
            unit, stratum = ex.group, f"{ex.meta['target_group']}|{ex.meta['toxic']}"
        else:
            unit, stratum = ex.group, ""
        unit_of[ex.group] = unit
        stratum_of[unit] = stratum
    return unit_of, stratum_of, dataset == "bbq"


def _groups_in_order(examples: Iterable[Example]) -> list[str]:
    return list(dict.fromkeys(ex.group for ex in examples))


def _compute_split(dataset: str, examples: Sequence[Example], seed: int) -> dict[str, list[str]]:
    fractions = SPLIT_FRACTIONS[dataset]
    unit_of, stratum_of, weighted = _split_units(dataset, examples)
    weights: dict[str, int] = {}
    for unit in unit_of.values():
        weights[unit] = weights.get(unit, 0) + 1
    by_stratum: dict[str, list[str]] = {}
    for unit, stratum in stratum_of.items():
        by_stratum.setdefault(stratum, []).append(unit)
    part_of_unit: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        part_of_unit.update(
            assign_units(by_stratum[stratum], weights if weighted else None, fractions, seed, salt=dataset)
        )
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for group in _groups_in_order(examples):
        out[part_of_unit[unit_of[group]]].append(group)
    return out


# --------------------------------------------------------------------------------------------------
# Saved split files
# --------------------------------------------------------------------------------------------------


def _source_hashes(dataset: str, data_dir: Path) -> dict[str, str]:
    hashes = {}
    for rel in SOURCE_FILES[dataset]:
        path = data_dir / rel
        if not path.is_file():
            raise data_error(path, None, "file not found")
        hashes[rel] = sha256_file(path)
    return hashes


def _split_record(dataset: str, examples: Sequence[Example], data_dir: Path, seed: int) -> dict[str, Any]:
    parts = _compute_split(dataset, examples, seed)
    per_group: dict[str, int] = {}
    for ex in examples:
        per_group[ex.group] = per_group.get(ex.group, 0) + 1
    return {
        "format": SPLIT_FORMAT,
        "dataset": dataset,
        "seed": seed,
        "fractions": dict(zip(PARTS, SPLIT_FRACTIONS[dataset])),
        "method": _SPLIT_METHOD[dataset],
        "source_files": _source_hashes(dataset, data_dir),
        "counts": {
            p: {"groups": len(parts[p]), "examples": sum(per_group[g] for g in parts[p])} for p in PARTS
        },
        "groups": parts,
    }


def _split_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / "splits" / f"{dataset}.json"


def _read_split_file(path: Path, dataset: str) -> dict[str, Any]:
    """The saved split record at ``path``, refusing invalid JSON or a record of another format or data set."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise data_error(path, None, f"split file is not valid JSON ({exc})", _REGENERATE_FIX) from exc
    if not isinstance(saved, dict) or saved.get("format") != SPLIT_FORMAT or saved.get("dataset") != dataset:
        raise data_error(path, None, f"not a {SPLIT_FORMAT} split for {dataset}", _REGENERATE_FIX)
    return saved


def _saved_parts(path: Path, saved: Mapping[str, Any], groups: Sequence[str]) -> dict[str, list[str]]:
    """The saved record's groups per part, refusing a split that does not cover ``groups`` exactly once."""
    parts = saved.get("groups") or {}
    saved_groups = [g for p in PARTS for g in parts.get(p, [])]
    if len(saved_groups) != len(set(saved_groups)) or set(saved_groups) != set(groups):
        raise data_error(
            path,
            None,
            "split does not cover the data's groups exactly once although the source hashes match",
            _REGENERATE_FIX,
        )
    return {p: list(parts[p]) for p in PARTS}


def _saved_split(
    dataset: str, data_dir: Path, seed: int, groups: Sequence[str]
) -> dict[str, list[str]] | None:
    """The saved split if it was made from these very files with this seed; else None (warns if stale)."""
    path = _split_path(data_dir, dataset)
    if not path.is_file():
        return None
    saved = _read_split_file(path, dataset)
    if saved.get("seed") != seed or saved.get("fractions") != dict(zip(PARTS, SPLIT_FRACTIONS[dataset])):
        return None  # another seed or fractions was asked for: compute that one (not stale, just different)
    if saved.get("source_files") != _source_hashes(dataset, data_dir):
        warnings.warn(
            f"{path} was made from other versions of the {dataset} files; using a freshly computed split "
            "instead. Run matsteer.data.make_splits() to refresh the saved split.",
            DataWarning,
            stacklevel=4,
        )
        return None
    return _saved_parts(path, saved, groups)


def split_for(
    dataset: str, examples: Sequence[Example], src: Source, data_dir: str | Path | None, seed: int
) -> dict[str, list[str]]:
    """Group ids per part: the saved split for the shipped files (when current), else computed."""
    if src.kind == "shipped":
        saved = _saved_split(dataset, resolve_data_dir(data_dir), seed, _groups_in_order(examples))
        if saved is not None:
            return saved
    return _compute_split(dataset, examples, seed)


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def get_split(
    dataset: str, *, data_dir: str | Path | None = None, seed: int = 0, source: str | Path | None = None
) -> dict[str, list[str]]:
    """Group ids per split (``train``/``dev``/``test``) of a shipped data set (or of ``source``)."""
    dataset = check_dataset(dataset)
    if dataset in HELPSTEER_DATASETS:
        raise ConfigError("HelpSteer splits are made while sampling; use load_helpsteer(..., split=...)")
    src = resolve_source(dataset, source, data_dir)
    parsed = parse(dataset, src, data_dir)
    return split_for(dataset, parsed.examples, src, data_dir, seed)


def make_splits(
    datasets: Iterable[str] | None = None,
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """(Re)compute and save the splits of the shipped data sets as ``{out_dir}/{dataset}.json``.

    ``out_dir`` defaults to ``{data_dir}/splits``. The files are byte-identical for identical inputs.
    """
    root = resolve_data_dir(data_dir)
    target = Path(out_dir) if out_dir is not None else root / "splits"
    written: dict[str, Path] = {}
    for name in datasets if datasets is not None else SHIPPED_DATASETS:
        name = check_dataset(name)
        if name not in SHIPPED_DATASETS:
            raise ConfigError(f"only shipped data sets have saved splits: {list(SHIPPED_DATASETS)}")
        src = resolve_source(name, None, root)
        parsed = parse(name, src, root)
        path = target / f"{name}.json"
        write_json(path, _split_record(name, parsed.examples, root, seed))
        written[name] = path
    return written
