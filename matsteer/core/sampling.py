"""Seeded batch indices: k distinct rows per side per attribute per batch, and the fixed dev subsets.

Batching follows the reference code: each batch draws, per attribute, a fresh random subset of k distinct
positives and k distinct negatives (independently across batches, i.e. with replacement across the epoch),
and an epoch has ``ceil(min_t min(#pos_t, #neg_t) / k)`` batches. The sampler is seeded, so a given seed gives
the same batches, and bitwise-identical parameters on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from matsteer.core.attributes import AttributeData

SEED_SAMPLER = 1_000_003  # offset so the batch stream differs from the init stream of the same seed


def sample_subsets(sizes: torch.Tensor, k: int, batches: int, generator: torch.Generator) -> torch.Tensor:
    """``[batches, T, k]`` int64: for every (batch, attribute t) k *distinct* indices in ``[0, sizes[t])``.

    Floyd's algorithm, vectorised over batches and attributes (the loop runs over the k slots only): each
    subset is uniformly random, and the cost is O(batches·T·k²), independent of the pool sizes (a randperm
    of the whole pool per batch, as the reference does, costs O(N) each time).
    """
    T = int(sizes.shape[0])
    out = torch.empty(batches, T, k, dtype=torch.int64)
    for i in range(k):
        j = sizes - k + i  # [T]: the slot's upper bound (inclusive)
        r = (torch.rand(batches, T, generator=generator, dtype=torch.float64) * (j + 1)).long()
        r = torch.minimum(r, j)  # guard against rounding up to j + 1
        dup = (out[:, :, :i] == r.unsqueeze(-1)).any(-1)
        out[:, :, i] = torch.where(dup, j.expand_as(r), r)
    return out


class BatchSampler:
    """Per-epoch batch indices into flat pools (``pool[idx]`` -> ``[T, k, d]``)."""

    def __init__(self, pos_sizes: list[int], neg_sizes: list[int], k: int, seed: int, resample_pos: bool):
        self.k = k
        self.pos_sizes = torch.tensor(pos_sizes)
        self.neg_sizes = torch.tensor(neg_sizes)
        self.pos_off = (self.pos_sizes.cumsum(0) - self.pos_sizes).view(1, -1, 1)
        self.neg_off = (self.neg_sizes.cumsum(0) - self.neg_sizes).view(1, -1, 1)
        self.batches = math.ceil(min(min(pos_sizes), min(neg_sizes)) / k)
        self.resample_pos = resample_pos
        self.gen = torch.Generator().manual_seed(seed + SEED_SAMPLER)

    def epoch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(pos_idx, neg_idx, mmd_pos_idx)``, each ``[batches, T, k]`` on ``device``."""
        pos = sample_subsets(self.pos_sizes, self.k, self.batches, self.gen) + self.pos_off
        neg = sample_subsets(self.neg_sizes, self.k, self.batches, self.gen) + self.neg_off
        ref = None
        if self.resample_pos:
            ref = (sample_subsets(self.pos_sizes, self.k, self.batches, self.gen) + self.pos_off).to(device)
        return pos.to(device), neg.to(device), ref


def fixed_subsets(attrs: Sequence[AttributeData], k_max: int, seed: int, device: torch.device):
    """Fixed dev subsets ``[T, k, d]`` per side (k = min(k_max, smallest dev side)), seeded."""
    k = min(k_max, *(min(a.positives.shape[0], a.negatives.shape[0]) for a in attrs))
    gen = torch.Generator().manual_seed(seed)
    pos, neg = [], []
    for a in attrs:
        pos.append(a.positives[torch.randperm(a.positives.shape[0], generator=gen)[:k].to(a.positives.device)])
        neg.append(a.negatives[torch.randperm(a.negatives.shape[0], generator=gen)[:k].to(a.negatives.device)])
    return torch.stack(pos).to(device, torch.float32), torch.stack(neg).to(device, torch.float32)
