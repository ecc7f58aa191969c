"""Train a MAT-Steer :class:`~matsteer.steerer.Steerer` on cached activations.

Only θ ``[T, d]``, W ``[T, d]`` and b ``[T]`` are optimised (Adam); activations are fixed tensors. Every step
draws ``batch_per_side`` positives and as many negatives per attribute, stacks them into ``[T, k, d]`` and
computes all loss terms for all attributes in one batched expression (:func:`matsteer.losses.loss_terms`).

Batching follows the reference code: each batch draws, per attribute, a fresh random subset of k distinct
positives and k distinct negatives (independently across batches, i.e. with replacement across the epoch),
and an epoch has ``ceil(min_t min(#pos_t, #neg_t) / k)`` batches. The sampler is seeded, so a given seed gives
bitwise-identical parameters on CPU.

Kernel scale: on raw LM activations (norms ~10-100) the paper's σ = 2 makes ``k(x, y) ≈ 0`` for any two distinct
points, so the MMD gradient vanishes. Two fixes: ``sigma="median"`` (σ = the median pairwise distance of a
seeded sample of training activations) and ``standardize=True`` (distances inside the kernel are measured in
per-dimension z-scores, ``‖(x - y) / (s √d)‖``; the steering itself stays in raw space). Check with
:func:`kernel_scale_report`; see ``docs/losses.md``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .errors import ArtifactError, ConfigError, DataError, TrainingError
from .losses import GATE_SCOPES, TERMS, VARIANTS, FusedObjective, loss_terms, squared_distances, weight_vector
from .steerer import Steerer

HISTORY_TERMS: tuple[str, ...] = (*TERMS, "total")
_SEED_SAMPLER = 1_000_003  # offsets so the init, batch and σ-sample streams differ for one seed
_SEED_KERNEL = 2_000_003
_GATHER_FLOATS = 1 << 24  # batches gathered at once: at most this many floats per side


# --------------------------------------------------------------------------------------------------------------
# Configuration and data
# --------------------------------------------------------------------------------------------------------------


#: Named settings one flag away (``TrainConfig.preset(name)``, ``matsteer train --preset NAME``). ``default`` is
#: the workbench's choice (docs/training.md says why); ``paper`` and ``reference`` are the paper's and the public
#: code's exact settings (σ = 2, no gate supervision, raw gate input, θ ~ randn).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"sigma": 2.0, "loss_variant": "paper", "gate_input": "raw", "gate_loss": "none", "theta_init": "randn",
              "theta_lr": None, "lambda_pos": 0.9, "lambda_sparse": 0.9, "lambda_ortho": 0.1},
    "reference": {"sigma": 2.0, "loss_variant": "reference", "gate_input": "raw", "gate_loss": "none",
                  "theta_init": "randn", "theta_lr": None, "lambda_pos": 0.9, "lambda_sparse": 0.9, "lambda_ortho": 0.1},
}
GATE_INPUTS: tuple[str, ...] = ("raw", "standardized")
GATE_LOSSES: tuple[str, ...] = ("none", "supervised")
THETA_INITS: tuple[str, ...] = ("randn", "zero")


@dataclass
class TrainConfig:
    """Training hyperparameters. Adam, lr 1e-3, 100 epochs, 16 + 16 rows per attribute per batch, λ_mmd 1 and
    λ_ortho 0.1 as the reference code; the rest is the workbench's default (:data:`PRESETS`, docs/training.md):

    - ``gate_input="standardized"``: gates see per-dimension z-scores of the activations (mean and std of the
      training pool). Folded into W and b when training ends, so the saved gate acts on raw activations.
    - ``gate_loss="supervised"`` with ``lambda_gate``: the logistic gate term of :mod:`matsteer.losses` (not the
      paper's), over ``gate_scope`` ("cross": each gate also kept shut on the other attributes' rows).
    - ``theta_init="zero"``: θ starts at 0 instead of ``randn(d)`` (‖randn‖ ≈ √d is arbitrary against activation
      norms of ~150), and ``theta_lr="std"`` gives θ steps in the activations' units.
    - ``sigma="median"`` (σ = 2 is a dead kernel on raw activations) and λ_pos = λ_sparse = 0.1.
    """

    epochs: int = 100
    batch_per_side: int = 16  # positives and negatives per attribute per batch (batch 96 for T = 3)
    lr: float = 1e-3
    sigma: float | str = "median"  # a number, or "median" (median pairwise distance of training activations)
    lambda_mmd: float = 1.0
    # λ_pos = λ_sparse = 0.1 (the paper's 0.9 half-shuts the supervised gates: docs/training.md)
    lambda_sparse: float = 0.1
    lambda_ortho: float = 0.1
    lambda_pos: float = 0.1
    lambda_gate: float = 1.0  # weight of the supervised gate term (used when gate_loss="supervised")
    loss_variant: str = "paper"  # or "reference"; see matsteer.losses
    gate_input: str = "standardized"  # or "raw" (the paper)
    gate_loss: str = "supervised"  # or "none" (the paper)
    gate_scope: str = "cross"  # or "own": which rows the supervised term keeps each gate shut on
    theta_init: str = "zero"  # or "randn" (the reference code)
    # θ's learning rate: "std" = lr × the RMS per-dimension std of the training activations (Adam's step is then
    # in the activations' units), a number, or None (= lr, the reference code).
    theta_lr: float | str | None = "std"
    preserve_norm: bool = True
    seed: int = 0
    device: str = "cpu"
    standardize: bool = False  # measure kernel distances in per-dimension z-scores (kernel only)
    dev_max_per_side: int = 512  # dev terms use a fixed seeded subset of at most this many rows per side
    median_sample: int = 1024  # rows sampled to compute sigma="median"
    # Intra-op CPU threads while training (restored afterwards); None keeps torch's setting. Each step is tiny
    # ([T, k, d]), so one thread avoids synchronisation overhead; on a busy machine 2 threads were >5x slower.
    cpu_threads: int | None = 1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named settings of :data:`PRESETS` (``default``, ``paper``, ``reference``), then ``overrides``."""
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def lambdas(self) -> dict[str, float]:
        """λ per loss term; the gate term's weight is 0 unless ``gate_loss == "supervised"``."""
        gate = self.lambda_gate if self.gate_loss == "supervised" else 0.0
        return {"mmd": self.lambda_mmd, "pos": self.lambda_pos, "sparse": self.lambda_sparse,
                "ortho": self.lambda_ortho, "gate": gate}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting and how to fix it."""

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.epochs) or self.epochs < 1:
            raise ConfigError(f"epochs must be an integer ≥ 1, got {self.epochs!r}; pass e.g. epochs=100.")
        if not is_int(self.batch_per_side) or self.batch_per_side < 1:
            raise ConfigError(f"batch_per_side must be an integer ≥ 1, got {self.batch_per_side!r}; pass e.g. 16 "
                              "(rows per side per attribute).")
        if not _finite_number(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}; pass e.g. lr=1e-3.")
        if self.theta_lr is not None and self.theta_lr != "std" and (
                not _finite_number(self.theta_lr) or self.theta_lr <= 0):
            raise ConfigError(f"theta_lr must be 'std', a positive number or None, got {self.theta_lr!r}.")
        if isinstance(self.sigma, str):
            if self.sigma != "median":
                raise ConfigError(f"sigma must be a positive number or 'median', got {self.sigma!r}.")
        elif not _finite_number(self.sigma) or self.sigma <= 0:
            raise ConfigError(
                f"sigma must be > 0 (the Gaussian kernel width), got {self.sigma!r}. "
                "Use e.g. sigma=2.0 or sigma='median'."
            )
        for name, value in self.lambdas().items():
            if not _finite_number(value) or value < 0:
                raise ConfigError(f"lambda_{name} must be a finite number ≥ 0, got {value!r}; pass a weight ≥ 0 "
                                  "(0 turns that loss term off).")
        for name, value, allowed in (("loss_variant", self.loss_variant, VARIANTS),
                                     ("gate_input", self.gate_input, GATE_INPUTS),
                                     ("gate_loss", self.gate_loss, GATE_LOSSES),
                                     ("gate_scope", self.gate_scope, GATE_SCOPES),
                                     ("theta_init", self.theta_init, THETA_INITS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}.")
        if not is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}.")
        if not is_int(self.dev_max_per_side) or self.dev_max_per_side < 1:
            raise ConfigError(f"dev_max_per_side must be an integer ≥ 1, got {self.dev_max_per_side!r}.")
        if not is_int(self.median_sample) or self.median_sample < 2:
            raise ConfigError(f"median_sample must be an integer ≥ 2, got {self.median_sample!r}.")
        if self.cpu_threads is not None and (not is_int(self.cpu_threads) or self.cpu_threads < 1):
            raise ConfigError(f"cpu_threads must be None or an integer ≥ 1, got {self.cpu_threads!r}.")
        resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown training settings {unknown}; known: {sorted(known)}.")
        return cls(**data)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:N').") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device='cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    return dev


@dataclass
class AttributeData:
    """One attribute's training activations: positives ``[Np, d]`` (the desired side), negatives ``[Nn, d]``."""

    name: str
    positives: torch.Tensor
    negatives: torch.Tensor
    positive_side: str = "label 1"


def _check_data(data: Sequence[AttributeData], what: str) -> int:
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


def _align_dev(data: Sequence[AttributeData], dev: Sequence[AttributeData], d: int) -> list[AttributeData]:
    """Dev attributes reordered to the training order (same names required)."""
    dev_d = _check_data(dev, "dev")
    if dev_d != d:
        raise DataError(f"Dev activations have d={dev_d} but training activations have d={d}; use the same site.")
    by_name = {a.name: a for a in dev}
    names = [a.name for a in data]
    if set(by_name) != set(names):
        raise DataError(f"Dev attributes {sorted(by_name)} must match the training attributes {sorted(names)}.")
    return [by_name[n] for n in names]


# --------------------------------------------------------------------------------------------------------------
# History and result
# --------------------------------------------------------------------------------------------------------------


@dataclass
class History:
    """Loss history: ``train[term][epoch][t]`` (epoch means over batches) and ``dev[term][epoch][t]``.

    Terms are :data:`HISTORY_TERMS` (mmd, pos, sparse, ortho unweighted, and total = the λ-weighted sum);
    per-attribute values sum to the term's total (see :mod:`matsteer.losses`). ``dev`` is empty without a dev set.
    """

    attributes: list[str]
    lambdas: dict[str, float]
    train: dict[str, list[list[float]]] = field(default_factory=lambda: {k: [] for k in HISTORY_TERMS})
    dev: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.train.get("total", []))

    def append(self, split: str, per_attribute: list[list[float]]) -> None:
        """Add one epoch: ``per_attribute`` is ``[5][T]`` in :data:`TERMS` order; total is derived."""
        target = self.train if split == "train" else self.dev
        if not target:
            target.update({k: [] for k in HISTORY_TERMS})
        lam = [self.lambdas.get(k, 0.0) for k in TERMS]
        for k, row in zip(TERMS, per_attribute):
            target[k].append([float(v) for v in row])
        total = [sum(lam[i] * per_attribute[i][t] for i in range(len(TERMS))) for t in range(len(self.attributes))]
        target["total"].append(total)

    def series(self, term: str = "total", attribute: str | None = None, split: str = "train") -> list[float]:
        """One curve over epochs: a term for one attribute, or summed over attributes (``attribute=None``)."""
        table = self.train if split == "train" else self.dev
        if term not in HISTORY_TERMS:
            raise ConfigError(f"Unknown loss term {term!r}; choose one of {', '.join(HISTORY_TERMS)}.")
        if not table:
            return []
        if attribute is None:
            return [sum(row) for row in table[term]]
        if attribute not in self.attributes:
            raise ConfigError(f"Unknown attribute {attribute!r}; this history has {self.attributes}.")
        t = self.attributes.index(attribute)
        return [row[t] for row in table[term]]

    def final(self, split: str = "train") -> dict[str, dict[str, float]] | None:
        """Last epoch: ``{term: {attribute: value, ..., "all": sum}}``; None if there is no such split."""
        table = self.train if split == "train" else self.dev
        if not table or not table["total"]:
            return None
        out: dict[str, dict[str, float]] = {}
        for term in HISTORY_TERMS:
            row = table[term][-1]
            out[term] = {**dict(zip(self.attributes, row)), "all": float(sum(row))}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "attributes": list(self.attributes),
            "lambdas": dict(self.lambdas),
            "terms": list(HISTORY_TERMS),
            "train": {k: [list(r) for r in v] for k, v in self.train.items()},
            "dev": {k: [list(r) for r in v] for k, v in self.dev.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        try:
            attributes = [str(a) for a in data["attributes"]]
            # Histories saved before the gate term existed have four terms: the missing one reads as 0.
            lambdas = {k: float(data["lambdas"].get(k, 0.0)) for k in TERMS}

            def table(src: dict[str, Any]) -> dict[str, list[list[float]]]:
                zeros = [[0.0] * len(attributes) for _ in src["total"]]
                return {k: [[float(x) for x in r] for r in src.get(k, zeros)] for k in HISTORY_TERMS}

            train = table(data["train"])
            dev_in = data.get("dev") or {}
            dev = table(dev_in) if dev_in else {}
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"Malformed training history ({exc!r}); re-train or re-save it.") from exc
        return cls(attributes=attributes, lambdas=lambdas, train=train, dev=dev)


@dataclass
class TrainResult:
    """What :func:`train` returns. The steerer lives on ``config.device``."""

    steerer: Steerer
    history: History
    config: TrainConfig
    sigma_used: float  # the numeric σ (resolved if config.sigma == "median")
    kernel_inv_scale: torch.Tensor | None  # [d] per-dimension kernel scaling when standardize=True
    steps_per_epoch: int
    steps: int
    wall_time_s: float
    theta_init: torch.Tensor | None = None  # [T, d] θ before the first step (for the training-health report)
    health: Any = None  # a matsteer.health.TrainingHealth when trained with dev data

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_time_s if self.wall_time_s > 0 else float("inf")

    def final_losses(self) -> dict[str, Any]:
        return {"train": self.history.final("train"), "dev": self.history.final("dev")}


# --------------------------------------------------------------------------------------------------------------
# Kernel scale
# --------------------------------------------------------------------------------------------------------------


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
    elif _finite_number(sigma) and float(sigma) > 0:
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


# --------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------


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


class _Sampler:
    """Per-epoch batch indices into flat pools (``pool[idx]`` -> ``[T, k, d]``)."""

    def __init__(self, pos_sizes: list[int], neg_sizes: list[int], k: int, seed: int, resample_pos: bool):
        self.k = k
        self.pos_sizes = torch.tensor(pos_sizes)
        self.neg_sizes = torch.tensor(neg_sizes)
        self.pos_off = (self.pos_sizes.cumsum(0) - self.pos_sizes).view(1, -1, 1)
        self.neg_off = (self.neg_sizes.cumsum(0) - self.neg_sizes).view(1, -1, 1)
        self.batches = math.ceil(min(min(pos_sizes), min(neg_sizes)) / k)
        self.resample_pos = resample_pos
        self.gen = torch.Generator().manual_seed(seed + _SEED_SAMPLER)

    def epoch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(pos_idx, neg_idx, mmd_pos_idx)``, each ``[batches, T, k]`` on ``device``."""
        pos = sample_subsets(self.pos_sizes, self.k, self.batches, self.gen) + self.pos_off
        neg = sample_subsets(self.neg_sizes, self.k, self.batches, self.gen) + self.neg_off
        ref = None
        if self.resample_pos:
            ref = (sample_subsets(self.pos_sizes, self.k, self.batches, self.gen) + self.pos_off).to(device)
        return pos.to(device), neg.to(device), ref


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def _stack_fixed(attrs: Sequence[AttributeData], k_max: int, seed: int, device: torch.device):
    """Fixed dev subsets ``[T, k, d]`` per side (k = min(k_max, smallest dev side)), seeded."""
    k = min(k_max, *(min(a.positives.shape[0], a.negatives.shape[0]) for a in attrs))
    gen = torch.Generator().manual_seed(seed)
    pos, neg = [], []
    for a in attrs:
        pos.append(a.positives[torch.randperm(a.positives.shape[0], generator=gen)[:k].to(a.positives.device)])
        neg.append(a.negatives[torch.randperm(a.negatives.shape[0], generator=gen)[:k].to(a.negatives.device)])
    return torch.stack(pos).to(device, torch.float32), torch.stack(neg).to(device, torch.float32)


def train(
    data: Sequence[AttributeData],
    config: TrainConfig | None = None,
    dev: Sequence[AttributeData] | None = None,
    progress: bool = True,
    health_probe: bool = False,
) -> TrainResult:
    """Train one steerer on all attributes jointly.

    data: one :class:`AttributeData` per attribute (positives ``[Np_t, d]``, negatives ``[Nn_t, d]``).
    dev: optional, same attribute names; dev loss terms are computed after every epoch on a fixed subset, and the
    result carries a :class:`~matsteer.health.TrainingHealth` report on dev (``health_probe``: with a logistic
    probe fitted on ``data`` as the yardstick).
    Raises :class:`ConfigError` / :class:`DataError` for bad settings or inputs, :class:`TrainingError` if a
    loss term becomes NaN/Inf (naming the epoch, step and term).
    """
    config = config or TrainConfig()
    config.validate()
    if resolve_device(config.device).type != "cpu" or config.cpu_threads is None:
        result = _train(data, config, dev, progress)
    else:
        previous = torch.get_num_threads()
        torch.set_num_threads(config.cpu_threads)
        try:
            result = _train(data, config, dev, progress)
        finally:
            torch.set_num_threads(previous)
    if dev:
        from .health import training_health

        result.health = training_health(result.steerer, dev, sigma=result.sigma_used, theta_init=result.theta_init,
                                        train=data if health_probe else None, seed=config.seed)
        for verdict in result.health.verdicts:
            warnings.warn(f"Training health: {verdict}", stacklevel=2)
    return result


def _train(
    data: Sequence[AttributeData], config: TrainConfig, dev: Sequence[AttributeData] | None, progress: bool
) -> TrainResult:
    data = list(data)
    d = _check_data(data, "training")
    dev_list = _align_dev(data, list(dev), d) if dev else None
    k = config.batch_per_side
    for a in data:
        for side, x in (("positives", a.positives), ("negatives", a.negatives)):
            if x.shape[0] < k:
                raise ConfigError(
                    f"batch_per_side={k} but attribute {a.name!r} has only {x.shape[0]} {side}. "
                    f"Lower batch_per_side to ≤ {x.shape[0]} or add more {side}."
                )
    device = resolve_device(config.device)
    names = [a.name for a in data]
    T = len(data)

    # Kernel scale (computed once, seeded).
    inv_scale = kernel_inv_scale(data) if config.standardize else None
    if config.sigma == "median":
        sigma = median_sigma(data, inv_scale=inv_scale, max_rows=config.median_sample, seed=config.seed + _SEED_KERNEL)
    else:
        sigma = float(config.sigma)
        # A fixed σ (the reference's 2.0) can be far below the activations' scale: say so before training.
        scale = median_sigma(data, inv_scale=inv_scale, max_rows=256, seed=config.seed + _SEED_KERNEL)
        if sigma < scale / 8:
            warnings.warn(
                f"sigma={sigma:g} is far below the median distance between these activations ({scale:.3g}): the "
                "Gaussian kernel is ~0 for distinct points and the MMD gradient vanishes. Use sigma='median' or "
                "standardize=True (see docs/losses.md).", stacklevel=2)
    inv_scale_dev = inv_scale.to(device) if inv_scale is not None else None

    # Pools on the device once (float32); batches are gathered from them with precomputed indices.
    pool_pos = torch.cat([a.positives.detach().to(device, torch.float32) for a in data])
    pool_neg = torch.cat([a.negatives.detach().to(device, torch.float32) for a in data])
    reference = config.loss_variant == "reference"
    sampler = _Sampler(
        [a.positives.shape[0] for a in data], [a.negatives.shape[0] for a in data], k, config.seed, reference
    )
    B = sampler.batches
    dev_pos = dev_neg = None
    if dev_list is not None:
        dev_pos, dev_neg = _stack_fixed(dev_list, config.dev_max_per_side, config.seed + _SEED_SAMPLER + 1, device)

    steerer = Steerer(names, d, [a.positive_side for a in data], generator=torch.Generator().manual_seed(config.seed))
    if config.theta_init == "zero":
        with torch.no_grad():
            steerer.theta.zero_()
    theta_init = steerer.theta.detach().clone()
    steerer.to(device)
    gate_map, theta_scale = _reparametrisation(config, data, device)
    # All parameters live in one flat buffer (θ, W, b are views) so torch's Adam updates a single tensor per step;
    # the gradients are closed-form (FusedObjective), written into its .grad.
    flat = torch.nn.Parameter(torch.cat(
        [steerer.theta.detach().reshape(-1) / theta_scale, steerer.gate_weight.detach().reshape(-1),
         steerer.gate_bias.detach()]
    ))
    flat.grad = torch.zeros_like(flat)
    theta_p = flat[: T * d].view(T, d)
    weight = flat[T * d : 2 * T * d].view(T, d)
    bias = flat[2 * T * d :]
    optimizer = FlatAdam(flat, config.lr)
    objective = FusedObjective(
        T, k, k, sigma=sigma, lambdas=config.lambdas(), variant=config.loss_variant,
        preserve_norm=config.preserve_norm, inv_scale=inv_scale_dev, gate_scope=config.gate_scope, device=device,
    )
    lambdas = weight_vector(config.lambdas(), device)
    history = History(attributes=names, lambdas=config.lambdas())
    step_terms = torch.empty(B, len(TERMS), T, device=device)  # per-step values, one copy per step, no syncs
    chunk = max(1, min(B, _GATHER_FLOATS // (T * k * d)))

    from tqdm.auto import tqdm  # local import: tqdm.auto picks the notebook widget in JupyterLab

    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="MAT-Steer", unit="epoch", disable=not progress, leave=True)
    with torch.inference_mode():
        for epoch in bar:
            pos_idx, neg_idx, ref_idx = sampler.epoch(device)
            # Gather a chunk of batches at once ([C, T, k, d], ≤ ~64 MB per side): one big copy instead of one
            # small advanced-indexing op per batch and side; each step then only takes a view.
            for c0 in range(0, B, chunk):
                c1 = min(B, c0 + chunk)
                pos_chunk, neg_chunk = pool_pos[pos_idx[c0:c1]], pool_neg[neg_idx[c0:c1]]
                ref_chunk = pool_pos[ref_idx[c0:c1]] if ref_idx is not None else None
                for b in range(c1 - c0):
                    theta = theta_p * theta_scale if theta_scale != 1.0 else theta_p
                    w_raw, b_raw = _raw_gate(weight, bias, gate_map)
                    per_attr, g_theta, g_weight, g_bias = objective(
                        theta, w_raw, b_raw, pos_chunk[b], neg_chunk[b], ref_chunk[b] if ref_chunk is not None else None
                    )
                    if gate_map is not None:  # chain rule through W = W_z / s, b = b_z - W·μ
                        g_weight = (g_weight - g_bias.unsqueeze(1) * gate_map[1]) * gate_map[0]
                    if theta_scale != 1.0:
                        g_theta = g_theta * theta_scale
                    torch.cat([g_theta.view(-1), g_weight.view(-1), g_bias], out=flat.grad)
                    optimizer.step()
                    step_terms[c0 + b].copy_(per_attr)

            # One sync per epoch: epoch means and a divergence check.
            means = step_terms.mean(0)  # [4, T]
            if not bool(torch.isfinite(means).all()) or not bool(torch.isfinite(flat).all()):
                _raise_divergence(step_terms, epoch, names, bool(torch.isfinite(flat).all()))
            history.append("train", means.tolist())
            theta = theta_p * theta_scale
            if dev_pos is not None and dev_neg is not None:
                dv = loss_terms(
                    theta, *_raw_gate(weight, bias, gate_map), dev_pos, dev_neg, sigma=sigma, lambdas=lambdas,
                    variant=config.loss_variant, preserve_norm=config.preserve_norm, inv_scale=inv_scale_dev,
                    gate_scope=config.gate_scope,
                )
                history.append("dev", dv.per_attribute.tolist())
            if progress:
                post = {"loss": f"{sum(history.train['total'][-1]):.4f}"}
                if history.dev:
                    post["dev"] = f"{sum(history.dev['total'][-1]):.4f}"
                bar.set_postfix(post)
    with torch.no_grad():
        w_raw, b_raw = _raw_gate(weight, bias, gate_map)
        steerer.theta.copy_(theta_p * theta_scale)
        steerer.gate_weight.copy_(w_raw)
        steerer.gate_bias.copy_(b_raw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    bar.close()
    return TrainResult(
        steerer=steerer,
        history=history,
        config=config,
        sigma_used=sigma,
        kernel_inv_scale=inv_scale,
        steps_per_epoch=B,
        steps=B * config.epochs,
        wall_time_s=wall,
        theta_init=theta_init,
    )


def _reparametrisation(
    config: TrainConfig, data: Sequence[AttributeData], device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, float]:
    """``(gate_map, theta_scale)``: how Adam's coordinates map to the steerer's parameters.

    Standardised gate input: Adam works on gates over z-scores (W_z, b_z); each step maps them to the raw-space
    gate the objective uses (W = W_z / s, b = b_z - W·μ, ``gate_map = (1/s [d], μ [d])``) and maps the gradients
    back. Same objective, better conditioned steps: a raw activation of norm ~150 moves a gate logit by ~3 per Adam
    step. ``theta_scale`` c: θ = c·θ' with Adam on θ', the same as giving θ its own learning rate c·lr inside one
    flat buffer and one Adam step.
    """
    moments = activation_moments(data) if "std" == config.theta_lr or config.gate_input == "standardized" else None
    gate_map = None
    if config.gate_input == "standardized" and moments is not None:
        mu, sd = moments
        gate_map = ((1.0 / sd).to(device, torch.float32), mu.to(device, torch.float32))
    if config.theta_lr is None:
        return gate_map, 1.0
    if config.theta_lr == "std" and moments is not None:
        return gate_map, float(moments[1].pow(2).mean().sqrt())
    return gate_map, float(config.theta_lr) / config.lr


class FlatAdam:
    """torch's fused Adam kernel (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` runs: one kernel per
    step) on one flat parameter, without the ``torch.optim`` class, whose constructor imports ``torch._dynamo``: about
    3 s of a 15 s training process here. β = (0.9, 0.999), ε = 1e-8, no weight decay: Adam's defaults. Falls back to
    ``torch.optim.Adam(fused=True)`` where the kernel is missing."""

    def __init__(self, param: torch.Tensor, lr: float) -> None:
        self.param, self.lr = param, float(lr)
        self._fallback = None if hasattr(torch, "_fused_adam_") else torch.optim.Adam([param], lr=lr, fused=True)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
        self.steps = torch.zeros((), dtype=torch.float32, device=param.device)  # as torch.optim keeps it when fused

    def step(self) -> None:
        if self._fallback is not None:
            self._fallback.step()
            return
        with torch.no_grad():
            self.steps += 1
            torch._fused_adam_([self.param], [self.param.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
                               lr=self.lr, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
                               maximize=False)


def _raw_gate(
    weight: torch.Tensor, bias: torch.Tensor, gate_map: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw-space gate ``(W [T, d], b [T])`` of a gate trained on z-scores (``gate_map = (1/s [d], μ [d])``)."""
    if gate_map is None:
        return weight, bias
    w = weight * gate_map[0]
    return w, bias - w @ gate_map[1]


def _raise_divergence(step_terms: torch.Tensor, epoch: int, names: list[str], params_ok: bool) -> None:
    """Find the first step and term that went NaN/Inf and raise :class:`TrainingError`."""
    bad = ~torch.isfinite(step_terms).cpu()  # [B, 4, T]
    hint = "Lower lr, use a larger sigma (or sigma='median'), or check the activations for extreme values."
    if not bool(bad.any()):
        raise TrainingError(
            f"Training diverged at epoch {epoch + 1}: the parameters became NaN/Inf after the last step "
            f"(gradient overflow). {hint}"
        )
    step = int(bad.flatten(1).any(1).nonzero()[0])
    terms = [TERMS[i] for i in range(len(TERMS)) if bool(bad[step, i].any())]
    attrs = sorted({names[t] for t in range(len(names)) if bool(bad[step, :, t].any())})
    raise TrainingError(
        f"Training diverged at epoch {epoch + 1}, step {step + 1}: the {', '.join(terms)} loss term(s) became "
        f"NaN/Inf (attributes: {', '.join(attrs)}). {hint}"
    )
