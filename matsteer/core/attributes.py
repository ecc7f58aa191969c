"""Training inputs: one :class:`AttributeData` per attribute (positives and negatives ``[rows, d]``) and their checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from matsteer.errors import ConfigError, DataError


@dataclass
class AttributeData:
    """One attribute's training activations: positives ``[Np, d]`` (the desired side), negatives ``[Nn, d]``."""

    name: str
    positives: torch.Tensor
    negatives: torch.Tensor
    positive_side: str = "label 1"


def check_attributes(data: Sequence[AttributeData], what: str) -> int:
    """Validate a list of attributes; return d. Raises :class:`DataError`."""
    if not data:
        raise DataError(f"No {what} attributes given; pass at least one AttributeData.")
    names = [a.name for a in data]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{what.capitalize()} attribute names must be unique non-empty strings, got {names}.")
    d = None
    for a in data:
        for side, x in (("positives", a.positives), ("negatives", a.negatives)):
            where = f"{what} attribute {a.name!r} {side}"
            if not isinstance(x, torch.Tensor) or x.dim() != 2:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(f"{where} must be a 2-D tensor [rows, d], got {shape}.")
            if x.shape[0] == 0:
                raise DataError(
                    f"{where} is empty: every attribute needs both positive and negative examples. "
                    "Check its labels / split, or drop the attribute."
                )
            if not x.is_floating_point():
                raise DataError(f"{where} must be floating point, got {x.dtype}.")
            if d is None:
                d = int(x.shape[1])
            elif x.shape[1] != d:
                raise DataError(
                    f"{where} have d={x.shape[1]} but earlier activations have d={d}; all attributes must come "
                    "from the same model and site."
                )
            finite = torch.isfinite(x).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise DataError(
                    f"{where} contain NaN/Inf in {bad} of {x.shape[0]} rows (first at row "
                    f"{int((~finite).nonzero()[0])}). Re-extract the activations, or drop those rows."
                )
    assert d is not None
    return d


def align_dev(data: Sequence[AttributeData], dev: Sequence[AttributeData], d: int) -> list[AttributeData]:
    """Dev attributes reordered to the training order (same names required)."""
    dev_d = check_attributes(dev, "dev")
    if dev_d != d:
        raise DataError(f"Dev activations have d={dev_d} but training activations have d={d}; use the same site.")
    by_name = {a.name: a for a in dev}
    names = [a.name for a in data]
    if set(by_name) != set(names):
        raise DataError(f"Dev attributes {sorted(by_name)} must match the training attributes {sorted(names)}.")
    return [by_name[n] for n in names]


def check_batch_size(data: Sequence[AttributeData], k: int) -> None:
    """Every side of every attribute must hold at least ``k`` rows (one batch draws k distinct rows per side)."""
    for a in data:
        for side, x in (("positives", a.positives), ("negatives", a.negatives)):
            if x.shape[0] < k:
                raise ConfigError(
                    f"batch_per_side={k} but attribute {a.name!r} has only {x.shape[0]} {side}. "
                    f"Lower batch_per_side to ≤ {x.shape[0]} or add more {side}."
                )
