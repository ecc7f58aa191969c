"""The Gaussian kernel's scale on real activations: per-dimension moments, σ by the median heuristic, a report.

On raw LM activations (norms ~10-100) the paper's σ = 2 makes ``k(x, y) ≈ 0`` for any two distinct points, so the
MMD gradient vanishes. Two fixes: ``sigma="median"`` (σ = the median pairwise distance of a seeded sample of
training activations) and ``standardize=True`` (distances inside the kernel are measured in per-dimension z-scores,
``‖(x - y) / (s √d)‖``; the steering itself stays in raw space). Check with :func:`kernel_scale_report`; see
``docs/losses.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from matsteer.core.attributes import AttributeData
from matsteer.core.config import finite_number
from matsteer.core.losses import squared_distances
from matsteer.errors import ConfigError, DataError


def _as_rows(data: Sequence[AttributeData] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise DataError(f"Expected activations [rows, d], got shape {tuple(data.shape)}.")
        return [data]
    return [x for a in data for x in (a.positives, a.negatives)]


def activation_moments(data: Sequence[AttributeData] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std ``([d], [d])`` float64 of all training activations (pooled over attributes and
    sides). Near-constant dimensions are floored at 1e-3 x the mean std, so nothing divides by ~0."""
    rows = _as_rows(data)
    total = sum(int(x.shape[0]) for x in rows)
    if total < 2:
        raise DataError("Need at least 2 activation rows to standardize activations.")
    # Two passes in float64 over row blocks (no big concatenation or full float64 copy): mean, then the centred
    # sum of squares (numerically safer than E[x²] - E[x]² for large-norm activations).
    def blocks():
        return (x[i : i + 8192].detach().cpu().double() for x in rows for i in range(0, x.shape[0], 8192))

    mean = sum(blk.sum(0) for blk in blocks()) / total
    ss = sum((blk - mean).pow(2).sum(0) for blk in blocks())
    std = (ss / (total - 1)).sqrt()
    return mean, std.clamp_min(1e-3 * float(std.mean()) + 1e-12)


def kernel_inv_scale(data: Sequence[AttributeData] | torch.Tensor) -> torch.Tensor:
    """``[d]`` float32: ``1 / (s_j √d)``, s_j the per-dimension std of all training activations (pooled).

    Inside the kernel, ``‖(x - y) ⊙ inv_scale‖²`` is then the mean squared per-dimension z-score difference
    (≈ 2 for two independent draws at any d), so σ is in z-score units.
    """
    _, std = activation_moments(data)
    return (1.0 / (std * math.sqrt(std.shape[0]))).float()


def _sample_rows(data: Sequence[AttributeData] | torch.Tensor, max_rows: int, seed: int) -> torch.Tensor:
    """A seeded sample of at most ``max_rows`` rows ``[r, d]`` (float64, CPU) pooled over all attributes/sides."""
    rows = _as_rows(data)
    sizes = [int(x.shape[0]) for x in rows]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(sum(sizes), generator=gen)[:max_rows].sort().values
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    out = []
    for i, x in enumerate(rows):
        local = pick[(pick >= offsets[i]) & (pick < offsets[i + 1])] - offsets[i]
        out.append(x[local.to(x.device)].detach().double().cpu())
    return torch.cat(out)


def _pairwise_sq(sample: torch.Tensor, inv_scale: torch.Tensor | None) -> torch.Tensor:
    """Squared distances of distinct pairs i < j of ``sample [r, d]`` -> ``[r(r-1)/2]`` (float64)."""
    sq = squared_distances(sample, sample, None if inv_scale is None else inv_scale.double().cpu())
    i, j = torch.triu_indices(sample.shape[0], sample.shape[0], offset=1)
    return sq[i, j]


def median_sigma(
    data: Sequence[AttributeData] | torch.Tensor,
    *,
    inv_scale: torch.Tensor | None = None,
    max_rows: int = 1024,
    seed: int = 0,
) -> float:
    """Median heuristic: σ = median pairwise distance of a seeded sample of activations (in kernel space)."""
    sample = _sample_rows(data, max_rows, seed)
    if sample.shape[0] < 2:
        raise DataError("sigma='median' needs at least 2 activation rows.")
    med = float(_pairwise_sq(sample, inv_scale).median().sqrt())
    if not med > 0:
        raise DataError("All sampled activations are identical, so the median distance is 0; pass a numeric sigma.")
    return med


def kernel_scale_report(
    data: Sequence[AttributeData] | torch.Tensor,
    sigma: float | str = 2.0,
    *,
    standardize: bool = False,
    max_rows: int = 1024,
    seed: int = 0,
) -> dict[str, Any]:
    """Check the Gaussian kernel's scale on real activations before training.

    Returns ``sigma`` (resolved if "median"), ``median_pairwise_distance`` (in kernel space), ``mean_norm``,
    ``mean_offdiag_kernel`` (mean ``k(x_i, x_j)`` over distinct sampled pairs), ``frac_kernel_below_1e-6`` and
    ``advice``. A mean off-diagonal kernel near 0 means the MMD gradient vanishes (σ too small for these
    activations); near 1 means the kernel cannot tell points apart (σ too large).
    """
    inv_scale = kernel_inv_scale(data) if standardize else None
    sample = _sample_rows(data, max_rows, seed)
    if sample.shape[0] < 2:
        raise DataError("The kernel scale report needs at least 2 activation rows.")
    sq = _pairwise_sq(sample, inv_scale)
    if sigma == "median":
        sigma_value = median_sigma(data, inv_scale=inv_scale, max_rows=max_rows, seed=seed)
    elif finite_number(sigma) and float(sigma) > 0:
        sigma_value = float(sigma)
    else:
        raise ConfigError(f"sigma must be a positive number or 'median', got {sigma!r}.")
    k = torch.exp(-sq / (2.0 * sigma_value**2))
    mean_k = float(k.mean())
    if mean_k < 1e-3:
        advice = (
            "Kernel ≈ 0 between distinct activations: the MMD gradient vanishes. "
            "Use sigma='median' and/or standardize=True."
        )
    elif mean_k > 0.99:
        advice = "Kernel ≈ 1 for all pairs: σ is too large to tell activations apart. Use a smaller sigma."
    else:
        advice = "Kernel scale looks usable."
    return {
        "sigma": sigma_value,
        "standardize": bool(standardize),
        "n_rows": int(sample.shape[0]),
        "d": int(sample.shape[1]),
        "mean_norm": float(sample.norm(dim=1).mean()),
        "median_pairwise_distance": float(sq.median().sqrt()),
        "mean_offdiag_kernel": mean_k,
        "frac_kernel_below_1e-6": float((k < 1e-6).double().mean()),
        "advice": advice,
    }
