"""Picking whole groups of loaded records: a split's groups, and a seeded ``limit`` (stratified for BBQ)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

from matsteer.data.records import Example, GenQuestion, MCQuestion
from matsteer.data.splits import rank_key

#: Any record with a ``group`` and a ``meta``.
Record = TypeVar("Record", Example, MCQuestion, GenQuestion)


def _take_groups(groups: Sequence[str], limit: int | None, seed: int, salt: str) -> set[str]:
    """``limit`` whole groups picked by seeded hash (deterministic, and a larger limit keeps the smaller pick)."""
    if limit is None or limit >= len(groups):
        return set(groups)
    return set(sorted(groups, key=lambda g: rank_key(f"{salt}:limit", seed, g))[:limit])


def _take_stratified(
    groups: Sequence[str], stratum_of: Mapping[str, str], limit: int | None, seed: int, salt: str
) -> set[str]:
    """``limit`` whole groups spread over strata in proportion to their sizes (largest remainders get the
    leftover places, ties by stratum name), each stratum's picked by the seeded hash of :func:`_take_groups`."""
    if limit is None or limit >= len(groups):
        return set(groups)
    by: dict[str, list[str]] = {}
    for g in groups:
        by.setdefault(stratum_of[g], []).append(g)
    keys = sorted(by)
    quota = {k: limit * len(by[k]) / len(groups) for k in keys}
    take = {k: math.floor(quota[k]) for k in keys}
    for k in sorted(keys, key=lambda k: (-(quota[k] - take[k]), k))[: limit - sum(take.values())]:
        take[k] += 1
    chosen: set[str] = set()
    for k in keys:
        chosen |= _take_groups(by[k], take[k], seed, salt) if take[k] else set()
    return chosen


def _bbq_stratum(item: Example | MCQuestion | GenQuestion) -> str:
    """BBQ subsets keep the context conditions and categories in their proportions (half ambiguous)."""
    return f"{item.meta.get('context_condition', '')}|{item.meta.get('category', '')}"


def select(
    items: Sequence[Record], keep: set[str] | None, limit: int | None, seed: int, salt: str
) -> list[Record]:
    """The items of the groups in ``keep`` (all if None), at most ``limit`` groups of them, in input order."""
    groups = [g for g in dict.fromkeys(it.group for it in items) if keep is None or g in keep]
    if salt == "bbq":
        strata = {it.group: _bbq_stratum(it) for it in items}
        chosen = _take_stratified(groups, strata, limit, seed, salt)
    else:
        chosen = _take_groups(groups, limit, seed, salt)
    return [it for it in items if it.group in chosen]
