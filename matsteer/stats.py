"""Uncertainty for comparisons: a seeded paired bootstrap over items, and mean ± std over seeds.

The paper reports single numbers without variance; these helpers let the workbench say how much of a
difference between two methods on the same test items could be resampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["BootstrapCI", "MeanStd", "mean_std", "paired_bootstrap_ci"]

# Bootstrap draws are generated in blocks of at most this many indices (memory bound). The block
# size depends only on n, so results depend only on (a, b, n_boot, seed).
_BLOCK_INDICES = 2_000_000


@dataclass(frozen=True)
class BootstrapCI:
    """Mean of ``a − b`` over items and its percentile bootstrap interval ``[low, high]`` (level ``1 − alpha``)."""

    mean_diff: float
    low: float
    high: float
    n: int
    n_boot: int
    alpha: float
    seed: int

    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly on one side of 0."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g} (n={self.n})"


def _vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    try:
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().numpy()  # type: ignore[union-attr]
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a sequence of numbers: {exc}") from None
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D (one score per item), got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN or inf.")
    return arr


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Paired percentile bootstrap of ``mean(a − b)``.

    a, b: ``[n]`` per-item scores of two methods on the *same* items (e.g. MC2 per question, 0/1
    correctness). Items are resampled with replacement ``n_boot`` times, the same indices for both
    methods (that is what makes it paired), and the interval is the ``alpha/2`` and ``1 − alpha/2``
    quantiles (numpy's default linear interpolation) of the resampled mean differences.
    Deterministic: numpy ``Generator(PCG64(seed))``, so the same inputs and seed give identical numbers.
    """
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise DataError(f"paired scores need the same items: a has {x.size}, b has {y.size}.")
    if x.size == 0:
        raise DataError("paired_bootstrap_ci needs at least one item.")
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}.")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")
    n_boot = int(n_boot)
    diff = x - y
    n = diff.size
    rng = np.random.Generator(np.random.PCG64(seed))
    rows = max(1, _BLOCK_INDICES // n)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(float(diff.mean()), float(low), float(high), n, n_boot, float(alpha), int(seed))


def mean_std(values: Sequence[float] | np.ndarray) -> MeanStd:
    """Mean and sample std (ddof = 1) of per-seed results; std is 0.0 for a single value."""
    arr = _vector(values, "values")
    if arr.size == 0:
        raise DataError("mean_std needs at least one value.")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return MeanStd(float(arr.mean()), std if math.isfinite(std) else 0.0, int(arr.size))
