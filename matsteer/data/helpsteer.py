"""HelpSteer / HelpSteer2 (not shipped: hub id or local file), sampled per attribute and split by prompt."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matsteer.data.readers import data_error, text_field
from matsteer.data.records import Example
from matsteer.data.registry import (
    HELPSTEER_ATTRIBUTES,
    HELPSTEER_DATASETS,
    PARTS,
    QA_TEMPLATE,
    SPLIT_FRACTIONS,
    DataWarning,
    check_limit,
    check_split,
)
from matsteer.data.selection import select
from matsteer.data.sources import resolve_source, rows_of
from matsteer.data.splits import assign_units, cut, rank_key
from matsteer.errors import ConfigError

#: One response read from the file: (group, prompt, response, {attribute: 0-4 score}).
_Record = tuple[str, str, str, dict[str, int]]


def _helpsteer_score(rec: Mapping[str, Any], attr: str, path: Path | str, where: str) -> int:
    """An integer 0-4 score (``3.0`` and ``"3"`` are accepted; parquet and CSV exports differ)."""
    value = rec.get(attr)
    number = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except ValueError:
            pass
    if not (math.isfinite(number) and number.is_integer() and 0 <= number <= 4):
        raise data_error(
            path, where, f"score {attr!r} must be an integer 0-4, got {value!r}", "fix or drop the row"
        )
    return int(number)


def _attributes(attribute: str | Sequence[str] | None) -> tuple[str, ...]:
    """The attributes asked for (None: all five), refusing unknown ones or none."""
    attrs = (
        HELPSTEER_ATTRIBUTES
        if attribute is None
        else (attribute,)
        if isinstance(attribute, str)
        else tuple(attribute)
    )
    bad = [a for a in attrs if a not in HELPSTEER_ATTRIBUTES]
    if bad or not attrs:
        raise ConfigError(
            f"unknown HelpSteer attribute(s) {bad}; valid choices: {', '.join(HELPSTEER_ATTRIBUTES)}"
        )
    return attrs


def _read_records(
    dataset: str, source: str | Path | None, attrs: Sequence[str]
) -> tuple[Path | str, list[_Record], dict[str, str]]:
    """(path, records in file order, prompt -> group id); responses to one prompt share a group."""
    src = resolve_source(dataset, source, None)
    ((path, rows),) = rows_of(dataset, src, ("prompt", "response", *attrs))
    records: list[_Record] = []
    prompt_ids: dict[str, str] = {}
    for where, rec in rows:
        prompt = text_field(rec, "prompt", path, where)
        response = text_field(rec, "response", path, where)
        scores = {a: _helpsteer_score(rec, a, path, where) for a in attrs}
        group = prompt_ids.setdefault(prompt, f"{dataset}:p{len(prompt_ids)}")
        records.append((group, prompt, response, scores))
    return path, records, prompt_ids


def _sample_attribute(
    records: Sequence[_Record],
    part_of: Mapping[str, str],
    quota: Mapping[str, int],
    wanted_parts: Sequence[str],
    attr: str,
    *,
    dataset: str,
    seed: int,
    path: Path | str,
) -> set[int]:
    """Indices of the records sampled for ``attr``: each wanted part's quota of positives and of negatives.

    Pools are ordered by a hash seeded with ``seed`` and salted with ``dataset`` and ``attr``; ``path`` names
    the file in the warning about a pool smaller than its quota.
    """
    chosen: set[int] = set()
    for part in wanted_parts:
        for label in (1, 0):
            pool = [
                i
                for i, (group, _, _, scores) in enumerate(records)
                if part_of[group] == part and int(scores[attr] >= 3) == label
            ]
            pool.sort(key=lambda i: rank_key(f"{dataset}:{attr}", seed, str(i)))
            if len(pool) < quota[part]:
                warnings.warn(
                    f"{path}: only {len(pool)} {'positive' if label else 'negative'} {attr} examples in "
                    f"{part} (wanted {quota[part]}); taking all of them",
                    DataWarning,
                    stacklevel=3,  # the caller of load_helpsteer
                )
            chosen.update(pool[: quota[part]])
    return chosen


def _examples(records: Sequence[_Record], chosen: set[int], attr: str, dataset: str) -> list[Example]:
    """The chosen records as ``attr`` Examples (score 3-4 -> label 1), in file order."""
    out: list[Example] = []
    for i in sorted(chosen):
        group, prompt, response, scores = records[i]
        out.append(
            Example(
                dataset,
                attr,
                prompt,
                response,
                int(scores[attr] >= 3),
                group,
                QA_TEMPLATE,
                {"row": str(i), "score": str(scores[attr])},
            )
        )
    return out


def load_helpsteer(
    source: str | Path | None = None,
    attribute: str | Sequence[str] | None = None,
    split: str = "all",
    *,
    dataset: str = "helpsteer",
    n_per_class: int = 500,
    seed: int = 0,
    limit: int | None = None,
) -> list[Example]:
    """HelpSteer(2) examples per attribute: score 3-4 -> label 1, 0-2 -> label 0 (the paper's rule).

    As in the paper, ``n_per_class`` positives and ``n_per_class`` negatives are sampled per attribute and
    split 40/10/50. To keep responses to one prompt together across *all* attributes, prompts (the
    groups) are first assigned to train/dev/test by seeded hash, then each split samples its share
    (e.g. 200/50/250 of 500) of positives and of negatives from its own prompts. A pool smaller than its
    share is taken whole, with a :class:`DataWarning`.

    Args:
        source: hub id (default ``nvidia/HelpSteer`` or ``nvidia/HelpSteer2``, its ``train`` split) or a
            local .jsonl/.json/.parquet file with ``prompt``, ``response`` and the 0-4 score columns.
        attribute: one attribute, several, or None for all five (:data:`HELPSTEER_ATTRIBUTES`).
    """
    if dataset not in HELPSTEER_DATASETS:
        raise ConfigError(f"dataset must be 'helpsteer' or 'helpsteer2', got {dataset!r}")
    split = check_split(split)
    check_limit(limit)
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ConfigError(f"n_per_class must be a positive int, got {n_per_class!r}")
    attrs = _attributes(attribute)
    path, records, prompt_ids = _read_records(dataset, source, attrs)

    fractions = SPLIT_FRACTIONS[dataset]
    part_of = assign_units(list(prompt_ids.values()), None, fractions, seed, salt=dataset)
    n_train, n_dev = cut(n_per_class, fractions)
    quota = {"train": n_train, "dev": n_dev, "test": n_per_class - n_train - n_dev}
    wanted_parts = PARTS if split == "all" else (split,)

    out: list[Example] = []
    for attr in attrs:
        chosen = _sample_attribute(records, part_of, quota, wanted_parts, attr,
                                   dataset=dataset, seed=seed, path=path)
        out.extend(_examples(records, chosen, attr, dataset))
    return select(out, None, limit, seed, dataset)
