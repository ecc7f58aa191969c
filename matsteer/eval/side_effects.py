"""Side effects of steering on neutral text (ITI-style): next-token cross-entropy and KL(unsteered ‖ steered).

Both are means over non-pad positions. Each has a ``*_total`` form returning a :class:`TokenMean` (sum and
count) so batches can be combined exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from matsteer.errors import DataError

__all__ = ["TokenMean", "cross_entropy", "cross_entropy_total", "next_token_kl", "next_token_kl_total"]


@dataclass(frozen=True)
class TokenMean:
    """A token-level sum and the number of tokens it covers; ``mean = total / count`` (NaN if empty).

    Add two with ``+`` to combine batches exactly (a token-weighted, not batch-weighted, mean).
    """

    total: float
    count: int

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def __add__(self, other: TokenMean) -> TokenMean:
        return TokenMean(self.total + other.total, self.count + other.count)


def _mask(mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """``mask`` as a bool tensor of ``shape`` on ``device`` (all True when None)."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(shape):
        raise DataError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)}.")
    return mask.to(device=device).bool()


def cross_entropy_total(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, shift: bool = True
) -> TokenMean:
    """Summed next-token NLL (nats) and the number of scored tokens.

    logits: ``[B, L, V]``; labels: ``[B, L]`` token ids; mask: ``[B, L]`` (1 = real token, 0 = pad).
    With ``shift=True`` (the Hugging Face convention: ``labels`` are the input ids) ``logits[:, i]``
    predicts ``labels[:, i + 1]``, and a pair counts only if both positions are real tokens, so the
    first token of each text (no prediction) and any pad (left or right) are excluded. With
    ``shift=False`` ``logits[:, i]`` predicts ``labels[:, i]`` and counts where ``mask[:, i]``.
    """
    if logits.ndim != 3 or tuple(labels.shape) != tuple(logits.shape[:2]):
        raise DataError(
            f"logits [B, L, V] and labels [B, L] expected, got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    m = _mask(mask, labels.shape, logits.device)
    labels = labels.to(logits.device)
    if shift:
        logits, labels, m = logits[:, :-1], labels[:, 1:], m[:, :-1] & m[:, 1:]
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), reduction="none"
    )
    sel = m.reshape(-1)
    return TokenMean(float(nll[sel].double().sum()), int(sel.sum()))


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, shift: bool = True
) -> float:
    """Mean next-token NLL in nats over scored tokens (see :func:`cross_entropy_total`); NaN if none."""
    return cross_entropy_total(logits, labels, mask, shift).mean


def next_token_kl_total(
    base_logits: torch.Tensor, steered_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> TokenMean:
    """Summed ``KL(p_base ‖ p_steered)`` (nats) over positions, and the number of positions.

    base_logits, steered_logits: ``[B, L, V]`` from the same inputs without / with steering;
    mask: ``[B, L]`` (1 = real token). Per position ``Σ_v p_base(v) (log p_base(v) − log p_steered(v))``
    of the next-token distributions; no shift is needed since both predict the same next token.
    """
    if base_logits.shape != steered_logits.shape or base_logits.ndim != 3:
        raise DataError(
            f"base and steered logits must both be [B, L, V], got {tuple(base_logits.shape)} and {tuple(steered_logits.shape)}."
        )
    m = _mask(mask, base_logits.shape[:2], base_logits.device)
    log_p = F.log_softmax(base_logits, dim=-1, dtype=torch.float32)
    log_q = F.log_softmax(steered_logits.to(base_logits.device), dim=-1, dtype=torch.float32)
    p = log_p.exp()
    # 0 · log 0 = 0: tokens the base model gives zero mass (e.g. logits of -inf) contribute nothing.
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)  # [B, L]
    return TokenMean(float(kl[m].double().sum()), int(m.sum()))


def next_token_kl(
    base_logits: torch.Tensor, steered_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """Mean next-token ``KL(unsteered ‖ steered)`` in nats over non-pad positions; NaN if none."""
    return next_token_kl_total(base_logits, steered_logits, mask).mean
