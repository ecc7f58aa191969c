"""MAT-Steer training losses as small pure functions, batched over attributes (no loop over T).

Shapes: T attributes, n positives and m negatives per attribute in a batch, hidden size d.

- ``pos``  ``[T, n, d]``: the batch's (unsteered) positive activations, row t from attribute t.
- ``neg``  ``[T, m, d]``: the batch's negative activations, row t from attribute t.
- ``theta``/``weight`` ``[T, d]``, ``bias`` ``[T]``: the steerer's parameters.

Every term is returned **per attribute** (a ``[T]`` tensor) so that training history can be kept per term per
attribute; for both variants the per-attribute values of a term **sum to that term's total**.

Two variants (see ``docs/losses.md`` for the full comparison):

``"paper"`` (Nguyen et al. 2025, §3.2-3.4, Eq. 10)
    L_MMD    = Σ_t MMD²(B_t^p, f(B_t^n))                      (sum over attributes, batch positives)
    L_pos    = Σ_t mean_{a∈B_t^p} G_t(a)²                      (own gate on own positives)
    L_sparse = Σ_t mean_{a∈B_t^n} |G_t(a)|                     (own gate on own negatives)
    L_ortho  = Σ_t Σ_{t'≠t} cos²(θ_t, θ_t')                    (ordered pairs: each pair counted twice)
    The paper writes L_pos / L_sparse as *sums* over the data. We use a **mean per attribute** over the batch
    instead: the structure (Σ over attributes, own gate on own data) is the paper's, but λ stays independent of
    the batch size (a sum over 16 rows would weigh the gate terms 16x against an MMD bounded by 2).

``"reference"`` (the public code, ``validation/steering.py``)
    L_MMD    = (1/T) Σ_t MMD²(P̃_t, f(B_t^n))                   (mean over attributes; P̃_t = positives freshly
                                                               resampled from attribute t's whole pool)
    L_pos    = mean over all T gates of all batch positives of every attribute
    L_sparse = mean over all T gates of all batch negatives of every attribute (cross-attribute sparsity)
    L_ortho  = Σ_{i<j} cos²(θ_i, θ_j)                          (unordered pairs: half the paper's value)
    Per-attribute split: MMD_t / T; for L_pos / L_sparse the share of attribute t's *data* (all T gates on
    attribute t's rows, divided by T); for L_ortho half of attribute t's row of cos².

Extension (not the paper's): a **supervised gate** term ``L_gate`` (``gate_loss="supervised"``). The paper's gates
get no direct signal about which side a token is on; this term is the logistic loss that opens gate t on attribute
t's negatives and shuts it on t's positives and (``gate_scope="cross"``) on every other attribute's rows:

    L_gate_t = ½ mean_{a∈B_t^n} BCE(G_t(a), 1) + ¼ mean_{a∈B_t^p} BCE(G_t(a), 0) + ¼ mean_{a∈B_{t'≠t}} BCE(G_t(a), 0)

(``gate_scope="own"``, or T = 1: ½ own negatives + ½ own positives). See :func:`gate_targets`.

Extension (not the paper's, off by default): a **background** gate term ``L_bg`` (``lambda_background > 0``):
background tokens (neutral text, chat-template / system-prompt tokens) belong to no attribute, and every gate is
kept shut on them, ``L_bg_t = mean_{a∈B_bg} BCE(G_t(a), 0)`` (:func:`background_gate_loss`). It is not one of
:data:`TERMS` (the training history keeps its five rows); the trainer adds its gradient
(:func:`background_gate_grad`) to every step's.

Total: ``L = λ_mmd L_MMD + λ_pos L_pos + λ_sparse L_sparse + λ_ortho L_ortho + λ_gate L_gate`` (λ_mmd = 1 and
λ_gate = 0 in the paper).

MMD² is the biased V-statistic with diagonal terms (Eq. 10), Gaussian kernel ``k(x,y)=exp(-‖x-y‖²/(2σ²))``.
An optional per-dimension ``inv_scale [d]`` rescales coordinates *inside the kernel only* (``standardize=True``
in training): the steering itself always happens in raw activation space.

:func:`loss_terms` is the definition (autograd differentiates it); :class:`~matsteer.core.fused.FusedObjective`
computes the same values with closed-form gradients and is what the trainer runs by default. It shares the kernel
(:func:`joint_kernel`, :func:`mmd_weights`) and the gate term (:func:`weighted_gate_bce`, :func:`gate_targets`)
with this module, and the tests check its values and gradients against autograd on :func:`loss_terms`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from matsteer.core.steerer import apply_steering
from matsteer.errors import ConfigError

VARIANTS: tuple[str, ...] = ("paper", "reference")
TERMS: tuple[str, ...] = ("mmd", "pos", "sparse", "ortho", "gate")
GATE_SCOPES: tuple[str, ...] = ("own", "cross")
_EPS = 1e-12


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown loss variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    return variant


# --------------------------------------------------------------------------------------------------------------
# Kernel and MMD
# --------------------------------------------------------------------------------------------------------------


def _prescale(x: torch.Tensor, sigma: float, inv_scale: torch.Tensor | None) -> torch.Tensor:
    """``x / σ`` (times ``inv_scale [d]`` if given), so the kernel is ``exp(-‖x'-y'‖²/2)``."""
    if inv_scale is None:
        return x * (1.0 / sigma)
    return x * (inv_scale / sigma)


def squared_distances(x: torch.Tensor, y: torch.Tensor, inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise ``‖x_i - y_j‖²``: x ``[..., n, d]``, y ``[..., m, d]`` -> ``[..., n, m]``.

    Uses ``‖x‖² + ‖y‖² - 2 x·y`` (one batched matmul, well-defined gradients at zero distance, unlike
    ``cdist``'s sqrt); clamped at 0 against rounding. ``inv_scale [d]`` multiplies coordinates first.
    """
    if inv_scale is not None:
        x, y = x * inv_scale, y * inv_scale
    sq = x.pow(2).sum(-1).unsqueeze(-1) + y.pow(2).sum(-1).unsqueeze(-2) - 2.0 * (x @ y.transpose(-1, -2))
    return sq.clamp_min(0.0)


def gaussian_kernel(
    x: torch.Tensor, y: torch.Tensor, sigma: float, inv_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``exp(-‖x_i - y_j‖² / (2σ²))``: x ``[..., n, d]``, y ``[..., m, d]`` -> ``[..., n, m]``."""
    return torch.exp(squared_distances(x, y, inv_scale) * (-0.5 / (sigma * sigma)))


def mmd2(x: torch.Tensor, y: torch.Tensor, sigma: float, inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Biased MMD² V-statistic (diagonals included), batched: x ``[..., n, d]``, y ``[..., m, d]`` -> ``[...]``.

    ``mean K(x,x) + mean K(y,y) - 2 mean K(x,y)``, computed as ``wᵀ K w`` on the joint Gram matrix of
    ``[x; y]`` with ``w = (1/n, …, 1/n, -1/m, …, -1/m)``: one matmul and one exp instead of three of each.
    """
    n, m = x.shape[-2], y.shape[-2]
    z = _prescale(torch.cat([x, y], dim=-2), sigma, inv_scale)  # [..., n+m, d]
    k = joint_kernel(z)  # [..., n+m, n+m]
    w = mmd_weights(n, m, z)  # [n+m]
    return (k @ w) @ w


def joint_kernel(z: torch.Tensor) -> torch.Tensor:
    """``exp(-‖z_i - z_j‖² / 2)`` ``[..., N, N]`` for rows already divided by σ: z ``[..., N, d]``."""
    half_sq = 0.5 * z.pow(2).sum(-1)  # [..., N]
    # log k = -(‖zi‖² + ‖zj‖² - 2 zi·zj)/2 ≤ 0; clamp against rounding so k ≤ 1.
    logk = (z @ z.transpose(-1, -2)) - half_sq.unsqueeze(-1) - half_sq.unsqueeze(-2)
    return torch.exp(logk.clamp_max(0.0))


def mmd_weights(n: int, m: int, like: torch.Tensor) -> torch.Tensor:
    """``w [n+m]`` with ``MMD² = wᵀ K w``: ``1/n`` for the first n rows, ``-1/m`` for the m after them."""
    return torch.cat([like.new_full((n,), 1.0 / n), like.new_full((m,), -1.0 / m)])


# --------------------------------------------------------------------------------------------------------------
# Individual terms, each -> [T]
# --------------------------------------------------------------------------------------------------------------


def alignment_loss(
    pos: torch.Tensor,
    steered_neg: torch.Tensor,
    sigma: float,
    variant: str = "paper",
    inv_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-attribute MMD alignment ``[T]``: pos ``[T, n, d]`` (unsteered), steered_neg ``[T, m, d]``.

    paper: ``MMD²_t`` (summed over t by the caller). reference: ``MMD²_t / T`` (the code averages over
    attributes). For the reference variant pass the *resampled* positives as ``pos``.
    """
    per_t = mmd2(pos, steered_neg, sigma, inv_scale)
    return per_t if check_variant(variant) == "paper" else per_t / per_t.shape[0]


def own_gates(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``G_t(a)`` for attribute t's own rows only: a ``[T, n, d]`` -> ``[T, n]`` (no ``[T, n, T]`` product)."""
    return torch.sigmoid(torch.einsum("tnd,td->tn", a, weight) + bias.unsqueeze(-1))


def positive_preservation(pos_gates: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """Per-attribute L_pos ``[T]`` from gate values of the batch positives.

    paper: ``pos_gates [T, n]`` = own gate on own positives -> ``mean_n G_t(a)²``.
    reference: ``pos_gates [T, n, T]`` = all T gates on attribute t's positives -> ``mean_{n,T'} G²  / T``
    (so the sum over t is the code's mean over every gate of every positive).
    """
    if check_variant(variant) == "paper":
        return pos_gates.pow(2).mean(-1)
    return pos_gates.pow(2).mean(dim=(-2, -1)) / pos_gates.shape[0]


def negative_sparsity(neg_gates: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """Per-attribute L_sparse ``[T]`` from gate values of the batch negatives ``[T, m, T]`` (all gates).

    paper: own gate on own negatives, ``mean_m |G_t(a)|`` (the diagonal ``neg_gates[t, :, t]``).
    reference: ``mean_{m,T'} |G| / T`` (all gates on every attribute's negatives, as the code).
    """
    if check_variant(variant) == "paper":
        return neg_gates.diagonal(dim1=0, dim2=2).abs().mean(0)  # diagonal -> [m, T]
    return neg_gates.abs().mean(dim=(-2, -1)) / neg_gates.shape[0]


def orthogonality(theta: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """Per-attribute L_ortho ``[T]`` from θ ``[T, d]``: squared cosines to the other vectors.

    paper: ``Σ_{t'≠t} cos²(θ_t, θ_t')`` (ordered pairs; the total counts each pair twice).
    reference: half of that (the total is the code's sum over unordered pairs i<j).
    """
    unit = theta / theta.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    cos2 = (unit @ unit.T).pow(2)
    off = cos2 - torch.diag_embed(cos2.diagonal())  # drop t = t'
    row = off.sum(-1)
    return row if check_variant(variant) == "paper" else 0.5 * row


def gate_targets(T: int, n: int, m: int, scope: str = "cross") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets and weights of the supervised gate term over a batch of T attributes (n positives, m negatives each).

    Rows follow the flattened batch: negatives ``[T*m]`` (attribute t's rows are ``t*m .. t*m+m-1``), positives
    ``[T*n]``; columns are the T gates. Returns ``(target_neg [T*m, T], weight_neg [T*m, T], weight_pos [T*n, T])``
    with ``L_gate_t = Σ_rows weight · BCE(G_t, target)`` (the positives' target is 0 everywhere). Gate t is opened
    on its own negatives (weight ½ in total), shut on its own positives (¼) and on the other attributes' rows (¼,
    ``scope="cross"``); with ``scope="own"`` or T = 1 the own positives take the whole ½.
    """
    if scope not in GATE_SCOPES:
        raise ConfigError(f"Unknown gate_scope {scope!r}; choose one of {', '.join(GATE_SCOPES)}.")
    eye = torch.eye(T, dtype=torch.float64)  # float64 so that 1/m-style weights are exact before any cast
    own_neg, own_pos = eye.repeat_interleave(m, dim=0), eye.repeat_interleave(n, dim=0)
    cross = scope == "cross" and T > 1
    pos_share = 0.25 if cross else 0.5
    other = 0.25 / ((T - 1) * (n + m)) if cross else 0.0
    weight_neg = own_neg * (0.5 / m) + (1 - own_neg) * other
    weight_pos = own_pos * (pos_share / n) + (1 - own_pos) * other
    return own_neg, weight_neg, weight_pos


def supervised_gate_loss(
    neg_logits: torch.Tensor, pos_logits: torch.Tensor, scope: str = "cross"
) -> torch.Tensor:
    """Per-gate logistic loss ``[T]`` from gate logits of all T gates on the batch negatives ``[T, m, T]`` and
    positives ``[T, n, T]`` (rows: attribute of the data; last dim: gate). See :func:`gate_targets`."""
    T, m, _ = neg_logits.shape
    n = pos_logits.shape[1]
    target, w_neg, w_pos = (x.to(neg_logits) for x in gate_targets(T, n, m, scope))
    return weighted_gate_bce(neg_logits.reshape(T * m, T), pos_logits.reshape(T * n, T), target, w_neg, w_pos)


def weighted_gate_bce(
    neg_logits: torch.Tensor,
    pos_logits: torch.Tensor,
    target: torch.Tensor,
    weight_neg: torch.Tensor,
    weight_pos: torch.Tensor,
) -> torch.Tensor:
    """``Σ_rows weight · BCE(G_t, target)`` per gate ``[T]`` on the flattened batch: logits of the negatives
    ``[T*m, T]`` (targets ``target``) and positives ``[T*n, T]`` (target 0), weights from :func:`gate_targets`."""
    bce_neg = torch.nn.functional.softplus(neg_logits) - target * neg_logits
    bce_pos = torch.nn.functional.softplus(pos_logits)
    return (weight_neg * bce_neg).sum(0) + (weight_pos * bce_pos).sum(0)


def background_gate_loss(logits: torch.Tensor) -> torch.Tensor:
    """Per-gate background term ``[T]`` from gate logits on background rows ``[N, T]``: ``mean_N BCE(G_t, 0)``
    (= mean softplus(logit)), which keeps every gate shut on tokens that belong to no attribute."""
    return torch.nn.functional.softplus(logits).mean(0)


def background_gate_grad(
    background: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_bg [T], d(scale·ΣL_bg)/dW [T, d], d(scale·ΣL_bg)/db [T])`` on background rows ``[N, d]``, in closed form:
    d softplus(z)/dz = sigmoid(z), so the gradient is the mean gate value times the row (the tests check autograd)."""
    logits = torch.addmm(bias, background, weight.t())  # [N, T]
    gates = torch.sigmoid(logits) * (scale / background.shape[0])
    return background_gate_loss(logits), torch.mm(gates.t(), background), gates.sum(0)


# --------------------------------------------------------------------------------------------------------------
# Everything at once (the training hot path)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LossTerms:
    """Per-attribute loss terms ``per_attribute [5, T]`` (rows in :data:`TERMS` order) and the weighted total."""

    per_attribute: torch.Tensor
    total: torch.Tensor

    @property
    def mmd(self) -> torch.Tensor:
        return self.per_attribute[0]

    @property
    def pos(self) -> torch.Tensor:
        return self.per_attribute[1]

    @property
    def sparse(self) -> torch.Tensor:
        return self.per_attribute[2]

    @property
    def ortho(self) -> torch.Tensor:
        return self.per_attribute[3]

    @property
    def gate(self) -> torch.Tensor:
        return self.per_attribute[4]

    def totals(self) -> dict[str, float]:
        """Each term summed over attributes (unweighted), and the weighted total, as floats."""
        sums = self.per_attribute.detach().sum(-1).tolist()
        return {**dict(zip(TERMS, sums)), "total": float(self.total.detach())}


def weight_vector(lambdas: Mapping[str, float], device: torch.device | str | None = None) -> torch.Tensor:
    """``[5]`` float32 weights (λ_mmd, λ_pos, λ_sparse, λ_ortho, λ_gate) from a mapping with keys :data:`TERMS`
    (a missing ``gate`` weight is 0: the paper has no such term)."""
    return torch.tensor([float(lambdas.get(k, 0.0)) for k in TERMS], dtype=torch.float32, device=device)


def loss_terms(
    theta: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    sigma: float,
    lambdas: torch.Tensor,
    variant: str = "paper",
    preserve_norm: bool = True,
    pos_mmd: torch.Tensor | None = None,
    inv_scale: torch.Tensor | None = None,
    gate_scope: str = "cross",
) -> LossTerms:
    """All five terms per attribute and the weighted total, in one batched expression.

    pos ``[T, n, d]``, neg ``[T, m, d]``; theta/weight ``[T, d]``; bias ``[T]``; lambdas ``[5]``
    (see :func:`weight_vector`). ``pos_mmd [T, n', d]``: positives the MMD compares against (the reference
    variant's freshly resampled positives); default ``pos``. Negatives are steered by :func:`apply_steering`
    (all T gates from the original activation, optional norm preservation) before the MMD.
    """
    check_variant(variant)
    steered, neg_gates = apply_steering(neg, theta, weight, bias, preserve_norm=preserve_norm)  # [T,m,d], [T,m,T]
    if variant == "paper":
        pos_gates = own_gates(pos, weight, bias)  # [T, n]
    else:
        pos_gates = torch.sigmoid(pos @ weight.T + bias)  # [T, n, T]
    mmd = alignment_loss(pos if pos_mmd is None else pos_mmd, steered, sigma, variant, inv_scale)
    lpos = positive_preservation(pos_gates, variant)
    lsparse = negative_sparsity(neg_gates, variant)
    lortho = orthogonality(theta, variant)
    lgate = supervised_gate_loss(neg @ weight.T + bias, pos @ weight.T + bias, gate_scope)
    stacked = torch.stack([mmd, lpos, lsparse, lortho, lgate])  # [5, T]
    return LossTerms(stacked, (lambdas @ stacked).sum())
