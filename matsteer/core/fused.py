"""The MAT-Steer objective with closed-form gradients: the trainer's fast path (:class:`FusedObjective`).

:func:`matsteer.core.losses.loss_terms` defines the objective; this module computes the same values and their
exact gradients for (θ, W, b) without autograd. The kernel (:func:`~matsteer.core.losses.joint_kernel`) and the
supervised gate term (:func:`~matsteer.core.losses.weighted_gate_bce`) are the definition's own functions; the
tests check every value and gradient against autograd on ``loss_terms``. A new loss term goes into ``loss_terms``
first (train it with ``train_steerer(..., gradients="autograd")``), then its gradient here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from matsteer.core.losses import (
    TERMS,
    check_variant,
    gate_targets,
    joint_kernel,
    mmd_weights,
    weighted_gate_bce,
)

_EPS = 1e-12
#: The terms this module has closed-form gradients for; a term added to ``TERMS`` without its gradient here is
#: refused (train with autograd until it is written).
FUSED_TERMS: tuple[str, ...] = ("mmd", "pos", "sparse", "ortho", "gate")


class FusedObjective:
    """The same objective as :func:`~matsteer.core.losses.loss_terms`, with its exact gradients in closed form.

    Why: each training step works on tiny tensors (``[T, 16, d]``), so time goes into per-op dispatch, not
    arithmetic. Autograd roughly doubles the op count and adds graph bookkeeping; writing the backward pass by
    hand (MMD through the joint Gram matrix, norm preservation, sigmoid gates, orthogonality) gives about a third
    of the ops. No autograd graph is built: call it under ``torch.no_grad()`` / ``inference_mode()``. The tests
    check values and gradients against autograd on ``loss_terms`` for both variants.

    Built once for fixed shapes: T attributes, n positives (``n_mmd`` positives in the MMD; the reference
    variant's resampled set), m negatives per attribute.
    """

    def __init__(
        self,
        T: int,
        n: int,
        m: int,
        *,
        sigma: float,
        lambdas: Mapping[str, float],
        variant: str = "paper",
        preserve_norm: bool = True,
        inv_scale: torch.Tensor | None = None,
        n_mmd: int | None = None,
        gate_scope: str = "cross",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if TERMS != FUSED_TERMS:
            raise NotImplementedError(
                f"FusedObjective has closed-form gradients for {FUSED_TERMS}, but the objective has {TERMS}: write "
                "the new term's gradient in matsteer/core/fused.py, or train with gradients='autograd'."
            )
        self.variant = check_variant(variant)
        self.T, self.n, self.m = T, n, m
        self.n_mmd = n if n_mmd is None else n_mmd
        self.preserve_norm = preserve_norm
        paper = variant == "paper"
        lam = {k: float(lambdas.get(k, 0.0)) for k in TERMS}
        # Coordinates are pre-multiplied by q = inv_scale / σ so that k = exp(-‖Δz‖²/2).
        self.q = (inv_scale.to(device=device, dtype=dtype) / sigma) if inv_scale is not None else torch.tensor(
            1.0 / sigma, dtype=dtype, device=device)
        alpha_mmd = lam["mmd"] * (1.0 if paper else 1.0 / T)
        self.coef = self.q * (2.0 * alpha_mmd / m)  # dL/dy = coef ⊙ (v_i z_i - (K w z)_i)
        self.w = mmd_weights(self.n_mmd, m, torch.empty((), dtype=dtype, device=device))
        self.wcol = self.w.view(1, -1, 1)
        self._gate_penalties(lam, paper, dtype, device)
        # Supervised gate term (0 weight unless λ_gate > 0): targets and weights of the flattened batch.
        self.supervised = lam["gate"] > 0
        target, w_neg, w_pos = (x.to(dtype=dtype, device=device) for x in gate_targets(T, n, m, gate_scope))
        self.gate_target, self.gate_w_neg, self.gate_w_pos = target, w_neg, w_pos
        self.lam_gate = lam["gate"]
        self.offdiag = 1.0 - torch.eye(T, dtype=dtype, device=device)
        self.ortho_coef = 4.0 * lam["ortho"] * (1.0 if paper else 0.5)
        # Per-attribute factors turning the raw per-step values into each variant's terms (rows: TERMS).
        self.term_scale = torch.tensor([[1.0]] * 5 if paper else [[1 / T], [1 / T], [1 / T], [0.5], [1.0]],
                                       dtype=dtype, device=device)

    def _gate_penalties(self, lam: dict[str, float], paper: bool, dtype: torch.dtype,
                        device: torch.device | str | None) -> None:
        """Gate penalties as per-(row, gate) weights: d L_sparse / d G and d L_pos / d G² on the flattened batch."""
        T, n, m = self.T, self.n, self.m
        eye = torch.eye(T, dtype=dtype, device=device)
        if paper:  # own gate on own rows only
            self.sparse_grad = (eye.repeat_interleave(m, dim=0) * (lam["sparse"] / m)).contiguous()  # [T*m, T]
            self.pos_coef = (eye.repeat_interleave(n, dim=0) * (2.0 * lam["pos"] / n)).contiguous()  # [T*n, T]
            self.pos_mask = eye.repeat_interleave(n, dim=0) / n  # L_pos_t = Σ mask · G²
        else:  # all gates of all rows
            self.sparse_grad = torch.full((1, 1), lam["sparse"] / (T * m * T), dtype=dtype, device=device)
            self.pos_coef = torch.full((1, 1), 2.0 * lam["pos"] / (T * n * T), dtype=dtype, device=device)

    def __call__(
        self,
        theta: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        pos_mmd: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(per_attribute [5, T], dL/dθ [T, d], dL/dW [T, d], dL/db [T])`` for pos ``[T, n, d]``, neg ``[T, m, d]``."""
        T, m, n, d = self.T, self.m, self.n, neg.shape[-1]
        a = neg.reshape(T * m, d)
        # Steering of negatives: all T gates from the original activation.
        ln = torch.addmm(bias, a, weight.t())  # gate logits [T*m, T]
        gn = torch.sigmoid(ln)
        u = torch.addmm(a, gn, theta)  # [T*m, d]
        an = s = None
        if self.preserve_norm:
            an = torch.linalg.vector_norm(a, dim=1, keepdim=True)
            s = an / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min_(_EPS)
            y = u * s
        else:
            y = u
        mmd, gy = self._mmd(pos if pos_mmd is None else pos_mmd, y)
        gu = self._through_norm(y, gy, an, s)
        g_theta = torch.mm(gn.t(), gu)  # [T, d]
        g_zn = torch.ops.aten.sigmoid_backward(torch.addmm(self.sparse_grad, gu, theta.t()), gn)  # [T*m, T]
        # Gates on positives: all T gates of every row (the paper's terms mask all but the own gate).
        p2 = pos.reshape(T * n, d)
        lp = torch.addmm(bias, p2, weight.t())  # [T*n, T]
        gp = torch.sigmoid(lp)
        g_zp = torch.ops.aten.sigmoid_backward(gp * self.pos_coef, gp)
        # The gate term's value is kept even when λ_gate = 0: it says how well the gates separate the sides.
        gate_term = weighted_gate_bce(ln, lp, self.gate_target, self.gate_w_neg, self.gate_w_pos)
        if self.supervised:  # d BCE / d logit = G - target
            g_zn = g_zn + (gn - self.gate_target) * self.gate_w_neg * self.lam_gate
            g_zp = g_zp + gp * self.gate_w_pos * self.lam_gate
        g_weight = torch.mm(g_zn.t(), a).addmm_(g_zp.t(), p2)  # [T, d]
        g_bias = g_zn.sum(0) + g_zp.sum(0)
        pos_term, sparse_term = self._gate_terms(gp, gn)
        ortho_term = self._orthogonality(theta, g_theta)
        raw = torch.stack([mmd, pos_term, sparse_term, ortho_term, gate_term])  # [5, T]
        return raw.mul_(self.term_scale), g_theta, g_weight, g_bias

    def _mmd(self, ref: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MMD² per attribute ``[T]`` on the joint Gram matrix of q ⊙ [ref; y], and dL/dy ``[T*m, d]``."""
        T, m, d = self.T, self.m, y.shape[-1]
        z = torch.cat([ref, y.view(T, m, d)], dim=1).mul_(self.q)  # [T, N, d]
        k = joint_kernel(z)  # [T, N, N]
        v = torch.matmul(k, self.w)  # [T, N]
        mmd = torch.matmul(v, self.w)  # [T]
        # dL/dy for the steered rows (i ≥ n_mmd); the kernel is symmetric, hence the factor 2 inside coef.
        nr = self.n_mmd
        kwz = torch.bmm(k[:, nr:], z * self.wcol)  # [T, m, d]
        gy = (z[:, nr:] * v[:, nr:].unsqueeze(2)).sub_(kwz).mul_(self.coef).view(T * m, d)
        return mmd, gy

    def _through_norm(self, y: torch.Tensor, gy: torch.Tensor, an: torch.Tensor | None,
                      s: torch.Tensor | None) -> torch.Tensor:
        """dL/du from dL/dy through the norm preservation ``y = ‖a‖ u/‖u‖`` (the identity without it)."""
        if an is None or s is None:
            return gy
        # dL/du = s (g - ŷ (ŷ·g)), ŷ = y/‖a‖.
        dot = torch.linalg.vecdot(y, gy).unsqueeze(1)
        return (gy - y * (dot / (an * an).clamp_min_(_EPS * _EPS))).mul_(s)

    def _gate_terms(self, gp: torch.Tensor, gn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled L_pos and L_sparse ``[T]`` from all gates on the positives ``[T*n, T]`` and negatives."""
        T, n, m = self.T, self.n, self.m
        if self.variant == "paper":
            return (gp * gp * self.pos_mask).sum(0), gn.view(T, m, T).diagonal(dim1=0, dim2=2).mean(0)
        return (gp * gp).view(T, n * T).mean(1), gn.view(T, m * T).mean(1)

    def _orthogonality(self, theta: torch.Tensor, g_theta: torch.Tensor) -> torch.Tensor:
        """Unscaled L_ortho ``[T]``; adds its gradient to ``g_theta`` in place.

        L = c Σ_{t≠t'} cos², dL/dû = 4c C_off û, then through û = θ/‖θ‖.
        """
        tn = torch.linalg.vector_norm(theta, dim=1, keepdim=True).clamp_min(_EPS)
        unit = theta / tn
        c_off = torch.mm(unit, unit.t()).mul_(self.offdiag)
        g_unit = torch.mm(c_off, unit).mul_(self.ortho_coef)
        g_theta += (g_unit - unit * torch.linalg.vecdot(unit, g_unit).unsqueeze(1)) / tn
        return (c_off * c_off).sum(1)
