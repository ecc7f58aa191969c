"""Closed-form steering directions ``[d]`` from contrast sets: CAA's mean difference, ITI's mass-mean shift, PCA.

Inputs are, per attribute, activations of the positive (desirable, label 1) side ``[Np, d]`` and of the negative
side ``[Nn, d]`` at the site being steered: a :class:`ContrastSet`, a ``(pos, neg)`` tuple, or anything with
``.positives``, ``.negatives`` and ``.positive_side`` (a :class:`~matsteer.activations.features.FeatureSet`, an
:class:`~matsteer.core.attributes.AttributeData`). All vectors are computed in float64 and returned as float32;
:mod:`matsteer.core.baselines` describes each method and turns the vectors into steerers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from matsteer.errors import ConfigError, DataError

#: honest_llama's default α for TruthfulQA (per attention head; see :mod:`matsteer.core.baselines`).
ITI_ALPHA = 15.0


class LabelledSides(Protocol):
    """Anything holding one attribute's two sides: a FeatureSet, an AttributeData."""

    @property
    def positives(self) -> torch.Tensor: ...

    @property
    def negatives(self) -> torch.Tensor: ...

    @property
    def positive_side(self) -> str: ...


@dataclass(frozen=True)
class ContrastSet:
    """Activations of one attribute's two sides at one site.

    positives: ``[Np, d]`` (label 1, the desirable side); negatives: ``[Nn, d]``;
    pairs: optional ``[P, 2]`` int64 rows ``(i, j)`` meaning ``positives[i]`` pairs with ``negatives[j]``
    (used by :func:`pca_of_differences` only); positive_side: what label 1 means (e.g. "truthful").
    """

    positives: torch.Tensor
    negatives: torch.Tensor
    pairs: torch.Tensor | None = None
    positive_side: str = "label 1"

    def __post_init__(self) -> None:
        pos, neg = self.positives, self.negatives
        if pos.ndim != 2 or neg.ndim != 2:
            raise DataError(
                f"positives and negatives must be [N, d], got {tuple(pos.shape)} and {tuple(neg.shape)}."
            )
        if pos.shape[1] != neg.shape[1]:
            raise DataError(f"positives have d={pos.shape[1]} but negatives d={neg.shape[1]}.")
        if pos.shape[0] == 0 or neg.shape[0] == 0:
            raise DataError(
                f"need at least one positive and one negative, got {pos.shape[0]} and {neg.shape[0]}."
            )
        if not (torch.isfinite(pos).all() and torch.isfinite(neg).all()):
            raise DataError("activations contain NaN or inf.")
        if self.pairs is not None:
            p = self.pairs
            if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] == 0 or p.dtype.is_floating_point:
                raise DataError(
                    f"pairs must be a non-empty integer tensor [P, 2], got {tuple(p.shape)} {p.dtype}."
                )
            if int(p.min()) < 0 or int(p[:, 0].max()) >= pos.shape[0] or int(p[:, 1].max()) >= neg.shape[0]:
                raise DataError("pairs index outside the positives/negatives.")

    @property
    def d(self) -> int:
        return int(self.positives.shape[1])

    @classmethod
    def from_features(cls, features: LabelledSides, pairs: torch.Tensor | None = None) -> ContrastSet:
        """Split a :class:`~matsteer.activations.features.FeatureSet` (labels 1/0) into its two sides."""
        return cls(features.positives, features.negatives, pairs, features.positive_side)


#: A ContrastSet, a ``(positives, negatives)`` tuple, or a FeatureSet (anything with .positives/.negatives).
ContrastLike = ContrastSet | tuple[torch.Tensor, torch.Tensor] | LabelledSides


def _as_contrast(value: ContrastLike, name: str) -> ContrastSet:
    if isinstance(value, ContrastSet):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return ContrastSet(value[0], value[1])
    if hasattr(value, "positives") and hasattr(value, "negatives"):
        return ContrastSet.from_features(value)
    raise ConfigError(
        f"attribute {name!r}: expected a ContrastSet, a (positives, negatives) tuple or a FeatureSet."
    )


def as_contrast_sets(data: Mapping[str, ContrastLike]) -> dict[str, ContrastSet]:
    if not data:
        raise ConfigError("no attributes given; pass {attribute: (positives, negatives)}.")
    sets = {name: _as_contrast(v, name) for name, v in data.items()}
    ds = {s.d for s in sets.values()}
    if len(ds) != 1:
        raise DataError(f"all attributes must come from one site with one hidden size, got d = {sorted(ds)}.")
    return sets


# --------------------------------------------------------------------------------------------------
# Vectors (plain tensors [d])
# --------------------------------------------------------------------------------------------------


# Rows per float64 block: activation sets can be large ([M, d] with M in the 100k), so nothing
# below materialises a float64 copy of them.
_BLOCK_ROWS = 8192


def _blocks(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[i : i + _BLOCK_ROWS].double() for i in range(0, x.shape[0], _BLOCK_ROWS)]


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean(pos) − mean(neg)`` in float64 ``[d]``, accumulated without a float64 copy."""
    return pos.sum(0, dtype=torch.float64) / pos.shape[0] - neg.sum(0, dtype=torch.float64) / neg.shape[0]


def _unit(v: torch.Tensor, what: str) -> torch.Tensor:
    norm = v.norm()
    if not norm > 0:
        raise DataError(
            f"{what} is zero: the two sides have identical means; there is no direction to steer along."
        )
    return v / norm


def mean_difference_vector(
    positives: torch.Tensor, negatives: torch.Tensor, multiplier: float = 1.0
) -> torch.Tensor:
    """CAA: ``multiplier · (mean(positives) − mean(negatives))``; ``[Np, d], [Nn, d] -> [d]`` float32."""
    cs = ContrastSet(positives, negatives)
    return (float(multiplier) * mean_diff(cs.positives, cs.negatives)).float()


def mass_mean_direction(
    positives: torch.Tensor, negatives: torch.Tensor, alpha: float = ITI_ALPHA
) -> torch.Tensor:
    """ITI mass-mean shift ``α · σ · u`` (see the module docstring); ``[Np, d], [Nn, d] -> [d]`` float32."""
    cs = ContrastSet(positives, negatives)
    u = _unit(mean_diff(cs.positives, cs.negatives), "mean(positives) − mean(negatives)")
    proj = torch.cat([b @ u for x in (cs.positives, cs.negatives) for b in _blocks(x)])  # [Np + Nn]
    sigma = proj.std(correction=0)  # population std, as np.std in honest_llama
    return (float(alpha) * sigma * u).float()


def random_pairs(n_pos: int, n_neg: int, seed: int = 0) -> torch.Tensor:
    """``[min(n_pos, n_neg), 2]`` seeded random pairing of positive and negative indices (each used at most once)."""
    g = torch.Generator().manual_seed(int(seed))
    k = min(n_pos, n_neg)
    return torch.stack(
        [torch.randperm(n_pos, generator=g)[:k], torch.randperm(n_neg, generator=g)[:k]], dim=1
    )


def _top_eigenvector(m: torch.Tensor) -> torch.Tensor:
    """Unit eigenvector ``[n]`` of the largest eigenvalue of a symmetric PSD float64 matrix ``[n, n]``."""
    if not bool(m.abs().max() > 0):
        raise DataError("every paired difference is zero: there is no direction to steer along.")
    return torch.linalg.eigh(m).eigenvectors[:, -1]


def pca_difference_vector(
    positives: torch.Tensor,
    negatives: torch.Tensor,
    pairs: torch.Tensor | None = None,
    multiplier: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """First (uncentred) principal direction of paired differences, scaled by their mean projection.

    positives ``[Np, d]``, negatives ``[Nn, d]``, pairs ``[P, 2]`` (or None: :func:`random_pairs` with
    ``seed``). Returns ``multiplier · mean_i(δ_i · u) · u`` as ``[d]`` float32, ``u`` sign-aligned with
    ``mean(positives) − mean(negatives)`` (see the module docstring for why uncentred).
    """
    cs = ContrastSet(positives, negatives, pairs)
    pos, neg = cs.positives, cs.negatives
    idx = (cs.pairs if cs.pairs is not None else random_pairs(pos.shape[0], neg.shape[0], seed)).long()
    idx = idx.to(pos.device)
    n_pairs, d = idx.shape[0], pos.shape[1]

    def diffs(rows: torch.Tensor) -> torch.Tensor:  # [r, d] float64
        return pos[idx[rows, 0]].double() - neg[idx[rows, 1]].double()

    # The top right singular vector of D = [δ_i] is found from the smaller of the two Gram matrices:
    # D Dᵀ [P, P] when pairs are few (u ∝ Dᵀ w), else Dᵀ D = Σ δ_i δ_iᵀ [d, d] built blockwise.
    if n_pairs <= d:
        dmat = diffs(torch.arange(n_pairs, device=idx.device))
        top = dmat.T @ _top_eigenvector(dmat @ dmat.T)
        total = dmat.sum(0)
    else:
        # Each block's product runs in float32 (a float64 GEMM is several times slower on CPU and the
        # direction does not need it); blocks are summed in float64.
        gram = torch.zeros(d, d, dtype=torch.float64, device=pos.device)
        total = torch.zeros(d, dtype=torch.float64, device=pos.device)
        for start in range(0, n_pairs, _BLOCK_ROWS):
            block = diffs(torch.arange(start, min(n_pairs, start + _BLOCK_ROWS), device=idx.device))
            b32 = block.float()
            gram += (b32.T @ b32).double()
            total += block.sum(0)
        top = _top_eigenvector(gram)
    u = _unit(top, "the first principal direction")
    # A tie (u ⟂ mean difference) keeps the solver's sign; otherwise point toward the positive side.
    if float(u @ mean_diff(pos, neg)) < 0:
        u = -u
    length = (total @ u) / n_pairs  # mean_i δ_i · u
    return (float(multiplier) * length * u).float()
