"""Train a MAT-Steer :class:`~matsteer.core.steerer.Steerer` on cached activations (:func:`train_steerer`).

Only θ ``[T, d]``, W ``[T, d]`` and b ``[T]`` are optimised (Adam); activations are fixed tensors. Every step
draws ``batch_per_side`` positives and as many negatives per attribute (:mod:`matsteer.core.sampling`), stacks
them into ``[T, k, d]`` and computes all loss terms for all attributes in one batched expression
(:func:`matsteer.core.losses.loss_terms`; its closed-form gradients in :mod:`matsteer.core.fused`). A given seed
gives bitwise-identical parameters on CPU. The kernel's scale (σ, ``standardize``) is set by
:mod:`matsteer.core.kernel`; the settings are :class:`~matsteer.core.config.TrainConfig`.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from matsteer.activations.models import resolve_device
from matsteer.core.attributes import AttributeData, align_dev, check_attributes, check_batch_size
from matsteer.core.config import TrainConfig
from matsteer.core.fused import FusedObjective
from matsteer.core.health import TrainingHealth, training_health
from matsteer.core.history import History
from matsteer.core.kernel import kernel_inv_scale, median_sigma
from matsteer.core.losses import TERMS, background_gate_grad, loss_terms, weight_vector
from matsteer.core.optimizer import FlatAdam, FlatParams, raw_gate, reparametrisation
from matsteer.core.sampling import SEED_SAMPLER, BatchSampler, fixed_subsets
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError, DataError, TrainingError

_SEED_KERNEL = 2_000_003  # offset so the σ-sample stream differs from the init and batch streams of one seed
_SEED_BACKGROUND = 3_000_017  # the background rows' stream (used only when lambda_background > 0)
_SEED_CALIBRATION = 4_000_037  # the calibration hold-out's stream (used only when calibrate_fpr is set)
_GATHER_FLOATS = 1 << 24  # batches gathered at once: at most this many floats per side
#: How :func:`train_steerer` gets each step's gradients: the closed form (:class:`FusedObjective`, the default),
#: autograd on :func:`loss_terms`, or one ``torch.compile``-d graph of ``loss_terms`` and its gradient.
GRADIENTS: tuple[str, ...] = ("closed-form", "autograd", "compiled")


@dataclass
class TrainResult:
    """What :func:`train_steerer` returns. The steerer lives on ``config.device``."""

    steerer: Steerer
    history: History
    config: TrainConfig
    sigma_used: float  # the numeric σ (resolved if config.sigma == "median")
    kernel_inv_scale: torch.Tensor | None  # [d] per-dimension kernel scaling when standardize=True
    steps_per_epoch: int
    steps: int
    wall_time_s: float
    theta_init: torch.Tensor | None = None  # [T, d] θ before the first step (for the training-health report)
    health: TrainingHealth | None = None  # the training-health report when trained with dev data
    background_loss: list[list[float]] | None = None  # [epoch][t]: the background gate term (when it is on)
    calibration: GateCalibration | None = None  # the bias calibration (when calibrate_fpr is set)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_time_s if self.wall_time_s > 0 else float("inf")

    def final_losses(self) -> dict[str, Any]:
        return {"train": self.history.final("train"), "dev": self.history.final("dev")}


def train_steerer(
    data: Sequence[AttributeData],
    config: TrainConfig | None = None,
    dev: Sequence[AttributeData] | None = None,
    progress: bool = True,
    health_probe: bool = False,
    *,
    gradients: str = "closed-form",
    background: torch.Tensor | None = None,
    dev_background: torch.Tensor | None = None,
) -> TrainResult:
    """Train one steerer on all attributes jointly.

    data: one :class:`AttributeData` per attribute (positives ``[Np_t, d]``, negatives ``[Nn_t, d]``).
    dev: optional, same attribute names; dev loss terms are computed after every epoch on a fixed subset, and the
    result carries a :class:`~matsteer.core.health.TrainingHealth` report on dev (``health_probe``: with a logistic
    probe fitted on ``data`` as the yardstick).
    gradients: one of :data:`GRADIENTS`. The closed form is the fast path; ``"autograd"`` differentiates
    :func:`~matsteer.core.losses.loss_terms` itself (the same objective, equal up to float rounding), so a new loss
    term trains before its closed-form gradient exists; ``"compiled"`` does so through ``torch.compile``.
    background ``[N, d]``: activations of tokens that belong to no attribute (neutral text, chat-template tokens),
    used by the background gate term (``config.lambda_background``) and the bias calibration
    (``config.calibrate_fpr``); ignored when both are off. dev_background ``[M, d]``: held-out background for the
    health report's targeting table (its "neutral" row).
    Raises :class:`ConfigError` / :class:`DataError` for bad settings or inputs, :class:`TrainingError` if a
    loss term becomes NaN/Inf (naming the epoch, step and term).
    """
    config = config or TrainConfig()
    config.validate()
    if gradients not in GRADIENTS:
        raise ConfigError(f"gradients must be one of {', '.join(GRADIENTS)}, got {gradients!r}.")
    if config.lambda_background > 0 and background is None:
        raise ConfigError("lambda_background > 0 needs background activations: pass train_steerer(..., "
                          "background=[N, d]) (e.g. matsteer.eval.gate_analysis.background_activations), or set "
                          "lambda_background=0.")
    if background is not None or config.calibrate_fpr is not None:
        check_attributes(data, "training")  # before splitting or sizing anything by them
    background = _check_background(background, data) if background is not None else None
    train_data, train_bg, held_pos, held_bg = list(data), background, None, None
    if config.calibrate_fpr is not None:
        train_data, train_bg, held_pos, held_bg = calibration_split(data, background, config.calibration_share,
                                                                    config.seed + _SEED_CALIBRATION)
    if config.lambda_background <= 0:
        train_bg = None
    if resolve_device(config.device).type != "cpu" or config.cpu_threads is None:
        result = _train(train_data, config, dev, progress, gradients, train_bg)
    else:
        previous = torch.get_num_threads()
        torch.set_num_threads(config.cpu_threads)
        try:
            result = _train(train_data, config, dev, progress, gradients, train_bg)
        finally:
            torch.set_num_threads(previous)
    if config.calibrate_fpr is not None and held_pos is not None:
        result.steerer, result.calibration = calibrate_gates(result.steerer, held_pos, held_bg, config.calibrate_fpr,
                                                             config.calibrate_sharpness)
    if dev:
        result.health = training_health(result.steerer, dev, sigma=result.sigma_used, theta_init=result.theta_init,
                                        neutral=dev_background, train=data if health_probe else None,
                                        seed=config.seed)
        for verdict in result.health.verdicts:
            warnings.warn(f"Training health: {verdict}", stacklevel=2)
    return result


def _train(
    data: Sequence[AttributeData], config: TrainConfig, dev: Sequence[AttributeData] | None, progress: bool,
    gradients: str, background: torch.Tensor | None = None,
) -> TrainResult:
    data = list(data)
    d = check_attributes(data, "training")
    dev_list = align_dev(data, list(dev), d) if dev else None
    check_batch_size(data, config.batch_per_side)
    device = resolve_device(config.device)
    inv_scale, sigma = _kernel_scale(data, config)
    run = _Run(data, dev_list, config, device, sigma, inv_scale, gradients, background)
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="MAT-Steer", unit="epoch", disable=not progress, leave=True)
    # No autograd graph on the closed-form path; the autograd paths build one inside each step only.
    with torch.inference_mode() if gradients == "closed-form" else torch.no_grad():
        for epoch in bar:
            run.train_epoch(epoch)
            run.dev_epoch()
            if progress:
                bar.set_postfix(_postfix(run.history))
    with torch.no_grad():
        run.params.write_to(run.steerer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    bar.close()
    return TrainResult(
        steerer=run.steerer,
        history=run.history,
        config=config,
        sigma_used=sigma,
        kernel_inv_scale=inv_scale,
        steps_per_epoch=run.sampler.batches,
        steps=run.sampler.batches * config.epochs,
        wall_time_s=wall,
        theta_init=run.theta_init,
        background_loss=run.background_history,
    )


def _kernel_scale(data: Sequence[AttributeData], config: TrainConfig) -> tuple[torch.Tensor | None, float]:
    """``(inv_scale [d] or None, σ)``, computed once and seeded; warns when a fixed σ is a dead kernel."""
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
                "standardize=True (see docs/losses.md).", stacklevel=3)
    return inv_scale, sigma


def _postfix(history: History) -> dict[str, str]:
    """The progress bar's latest losses (summed over attributes)."""
    post = {"loss": f"{sum(history.train['total'][-1]):.4f}"}
    if history.dev:
        post["dev"] = f"{sum(history.dev['total'][-1]):.4f}"
    return post


class _Run:
    """One training run's state: pools, sampler, parameters, objective, optimizer and history."""

    def __init__(self, data: list[AttributeData], dev: list[AttributeData] | None, config: TrainConfig,
                 device: torch.device, sigma: float, inv_scale: torch.Tensor | None, gradients: str,
                 background: torch.Tensor | None = None) -> None:
        self.config, self.device, self.sigma = config, device, sigma
        self.names = [a.name for a in data]
        T, d, k = len(data), int(data[0].positives.shape[1]), config.batch_per_side
        self.inv_scale = inv_scale.to(device) if inv_scale is not None else None
        # Pools on the device once (float32); batches are gathered from them with precomputed indices.
        self.pool_pos = torch.cat([a.positives.detach().to(device, torch.float32) for a in data])
        self.pool_neg = torch.cat([a.negatives.detach().to(device, torch.float32) for a in data])
        self.sampler = BatchSampler([a.positives.shape[0] for a in data], [a.negatives.shape[0] for a in data], k,
                                    config.seed, config.loss_variant == "reference")
        self.dev_pos: torch.Tensor | None = None
        self.dev_neg: torch.Tensor | None = None
        if dev is not None:
            self.dev_pos, self.dev_neg = fixed_subsets(dev, config.dev_max_per_side, config.seed + SEED_SAMPLER + 1,
                                                       device)
        self.steerer, self.theta_init = _initial_steerer(data, config, d, device)
        self.params = FlatParams(self.steerer, *reparametrisation(config, data, device))
        self.optimizer = FlatAdam(self.params.flat, config.lr)
        self.lambdas = weight_vector(config.lambdas(), device)
        self.step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
        if gradients == "closed-form":
            self.objective = FusedObjective(
                T, k, k, sigma=sigma, lambdas=config.lambdas(), variant=config.loss_variant,
                preserve_norm=config.preserve_norm, inv_scale=self.inv_scale, gate_scope=config.gate_scope,
                device=device,
            )
            self.step = self._closed_form_step
        else:
            self.spec = _LossSpec(T, d, self.params.theta_scale, self.params.gate_map, sigma, self.lambdas,
                                  config.loss_variant, config.preserve_norm, self.inv_scale, config.gate_scope)
            self.step = self._compiled_step if gradients == "compiled" else self._autograd_step
        self.history = History(attributes=self.names, lambdas=config.lambdas())
        self.step_terms = torch.empty(self.sampler.batches, len(TERMS), T, device=device)  # per step, no syncs
        self.chunk = max(1, min(self.sampler.batches, _GATHER_FLOATS // (T * k * d)))
        # The background gate term: its own seeded stream, so that runs without it draw exactly as before.
        self.background: torch.Tensor | None = None
        self.background_history: list[list[float]] | None = None
        if background is not None and config.lambda_background > 0:
            self.background = background.detach().to(device, torch.float32)
            self.bg_gen = torch.Generator(device=device).manual_seed(config.seed + _SEED_BACKGROUND)
            self.bg_terms = torch.empty(self.sampler.batches, T, device=device)
            self.background_history = []

    def train_epoch(self, epoch: int) -> None:
        """One epoch of Adam steps; then one sync: the epoch means and a divergence check."""
        B = self.sampler.batches
        pos_idx, neg_idx, ref_idx = self.sampler.epoch(self.device)
        bg_idx = None
        if self.background is not None:
            bg_idx = torch.randint(self.background.shape[0], (B, self.config.background_per_batch),
                                   generator=self.bg_gen, device=self.device)
        # Gather a chunk of batches at once ([C, T, k, d], ≤ ~64 MB per side): one big copy instead of one
        # small advanced-indexing op per batch and side; each step then only takes a view.
        for c0 in range(0, B, self.chunk):
            c1 = min(B, c0 + self.chunk)
            pos_chunk, neg_chunk = self.pool_pos[pos_idx[c0:c1]], self.pool_neg[neg_idx[c0:c1]]
            ref_chunk = self.pool_pos[ref_idx[c0:c1]] if ref_idx is not None else None
            for b in range(c1 - c0):
                per_attr = self.step(pos_chunk[b], neg_chunk[b], ref_chunk[b] if ref_chunk is not None else None)
                if bg_idx is not None:
                    self._background_step(c0 + b, bg_idx[c0 + b])
                self.optimizer.step()
                self.step_terms[c0 + b].copy_(per_attr)
        means = self.step_terms.mean(0)  # [5, T]
        flat = self.params.flat
        if not bool(torch.isfinite(means).all()) or not bool(torch.isfinite(flat).all()):
            _raise_divergence(self.step_terms, epoch, self.names, bool(torch.isfinite(flat).all()))
        self.history.append("train", means.tolist())
        if self.background_history is not None:
            self.background_history.append(self.bg_terms.mean(0).tolist())

    def _background_step(self, step: int, idx: torch.Tensor) -> None:
        """Add the background gate term's closed-form gradient (every gate shut on background rows) to this step's."""
        assert self.background is not None
        w_raw, b_raw = self.params.raw_gate()
        value, g_weight, g_bias = background_gate_grad(self.background[idx], w_raw, b_raw,
                                                       self.config.lambda_background)
        self.params.add_gate_grad(g_weight, g_bias)
        self.bg_terms[step].copy_(value)

    def dev_epoch(self) -> None:
        """The dev loss terms at the current parameters (nothing without a dev set)."""
        if self.dev_pos is None or self.dev_neg is None:
            return
        c = self.config
        theta = self.params.theta_p * self.params.theta_scale
        dv = loss_terms(
            theta, *self.params.raw_gate(), self.dev_pos, self.dev_neg, sigma=self.sigma, lambdas=self.lambdas,
            variant=c.loss_variant, preserve_norm=c.preserve_norm, inv_scale=self.inv_scale, gate_scope=c.gate_scope,
        )
        self.history.append("dev", dv.per_attribute.tolist())

    def _closed_form_step(self, pos: torch.Tensor, neg: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """Per-attribute terms ``[5, T]`` of one batch; its closed-form gradient goes into ``flat.grad``."""
        p = self.params
        theta = p.theta_p * p.theta_scale if p.theta_scale != 1.0 else p.theta_p
        w_raw, b_raw = p.raw_gate()
        per_attr, g_theta, g_weight, g_bias = self.objective(theta, w_raw, b_raw, pos, neg, ref)
        p.set_grad(g_theta, g_weight, g_bias)
        return per_attr

    def _autograd_step(self, pos: torch.Tensor, neg: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """Per-attribute terms ``[5, T]`` of one batch; autograd's gradient goes into ``flat.grad``."""
        flat = self.params.flat
        with torch.enable_grad():
            total, per_attr = _flat_loss(flat, pos, neg, ref, *self.spec.args())
            (grad,) = torch.autograd.grad(total, flat)
        assert flat.grad is not None
        flat.grad.copy_(grad)
        return per_attr.detach()

    def _compiled_step(self, pos: torch.Tensor, neg: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """As :meth:`_autograd_step`, through one compiled graph of the loss and its gradient."""
        flat = self.params.flat
        grad, (_, per_attr) = _compiled_grad_and_value()(flat.detach(), pos, neg, ref, *self.spec.args())
        assert flat.grad is not None
        flat.grad.copy_(grad)
        return per_attr


@dataclass(frozen=True)
class _LossSpec:
    """What :func:`_flat_loss` needs besides the batch, fixed for one run."""

    T: int
    d: int
    theta_scale: float
    gate_map: tuple[torch.Tensor, torch.Tensor] | None
    sigma: float
    lambdas: torch.Tensor
    variant: str
    preserve_norm: bool
    inv_scale: torch.Tensor | None
    gate_scope: str

    def args(self) -> tuple[Any, ...]:
        """As plain arguments (tensors and constants), so ``torch.compile`` reuses its graph across runs."""
        gate_inv_s, gate_mu = self.gate_map if self.gate_map is not None else (None, None)
        return (self.T, self.d, self.theta_scale, gate_inv_s, gate_mu, self.sigma, self.lambdas, self.variant,
                self.preserve_norm, self.inv_scale, self.gate_scope)


def _flat_loss(
    flat: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, ref: torch.Tensor | None, T: int, d: int,
    theta_scale: float, gate_inv_s: torch.Tensor | None, gate_mu: torch.Tensor | None, sigma: float,
    lambdas: torch.Tensor, variant: str, preserve_norm: bool, inv_scale: torch.Tensor | None, gate_scope: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total, per_attribute [5, T])`` of :func:`loss_terms` as a function of Adam's flat coordinates ``[2Td + T]``."""
    theta_p, weight, bias = flat[: T * d].view(T, d), flat[T * d : 2 * T * d].view(T, d), flat[2 * T * d :]
    theta = theta_p * theta_scale if theta_scale != 1.0 else theta_p
    gate_map = (gate_inv_s, gate_mu) if gate_inv_s is not None and gate_mu is not None else None
    terms = loss_terms(
        theta, *raw_gate(weight, bias, gate_map), pos, neg, sigma=sigma, lambdas=lambdas, variant=variant,
        preserve_norm=preserve_norm, pos_mmd=ref, inv_scale=inv_scale, gate_scope=gate_scope,
    )
    return terms.total, terms.per_attribute


@functools.cache
def _compiled_grad_and_value() -> Callable[..., Any]:
    """``torch.compile`` of (∂total/∂flat, (total, per_attribute)): one graph for the loss and its gradient, built
    once per process (compiling takes tens of seconds; the compiled code is reused while the shapes stay)."""
    return torch.compile(torch.func.grad_and_value(_flat_loss, has_aux=True), dynamic=False)


def _check_background(background: torch.Tensor, data: Sequence[AttributeData]) -> torch.Tensor:
    """Background rows ``[N, d]`` must be a finite float matrix of the training activations' width."""
    d = int(data[0].positives.shape[1])
    if not isinstance(background, torch.Tensor) or background.dim() != 2 or int(background.shape[1]) != d:
        shape = tuple(background.shape) if isinstance(background, torch.Tensor) else type(background).__name__
        raise DataError(f"background must be a [N, d] tensor with d={d} (the training activations'), got {shape}.")
    if background.shape[0] < 2 or not background.is_floating_point() or not bool(torch.isfinite(background).all()):
        raise DataError("background must hold at least 2 finite floating-point rows.")
    return background


def calibration_split(
    data: Sequence[AttributeData], background: torch.Tensor | None, share: float, seed: int
) -> tuple[list[AttributeData], torch.Tensor | None, list[torch.Tensor], torch.Tensor | None]:
    """Hold out a seeded ``share`` of each attribute's positives and of the background for the bias calibration.

    Returns ``(training data, training background [N', d] or None, held-out positives per attribute [h_t, d],
    held-out background [h, d] or None)``. Negatives are all kept for training (the calibration sets no
    recall). Each side keeps at least one row on both parts.
    """
    gen = torch.Generator().manual_seed(seed)

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(x.shape[0])
        h = min(n - 1, max(1, round(share * n)))
        perm = torch.randperm(n, generator=gen).to(x.device)
        return x[perm[h:]], x[perm[:h]]

    train, held = [], []
    for a in data:
        keep, out = split(a.positives)
        train.append(AttributeData(a.name, keep, a.negatives, a.positive_side))
        held.append(out)
    bg_train, bg_held = split(background) if background is not None else (None, None)
    return train, bg_train, held, bg_held


def calibrated_bias(logits: torch.Tensor, bias: float, rate: float) -> float:
    """The bias at which a share ``rate`` of rows that should stay shut opens (gate ≥ 0.5, i.e. logit ≥ 0).

    logits ``[N]``: the gate's logits on those rows at its current ``bias``. Only the bias moves (the gate keeps its
    ranking). The new bias puts ``⌊rate·N⌋`` rows at or above 0, halfway between two neighbouring logits, so on
    fresh rows of the same distribution the open share is ``rate`` up to sampling error.
    """
    if not 0 < rate < 1:
        raise ConfigError(f"rate must be in (0, 1), got {rate!r}.")
    z = (logits.detach().double().reshape(-1).cpu() - float(bias)).sort(descending=True).values  # w·a, largest first
    n = int(z.numel())
    if n == 0:
        raise DataError("Calibration needs at least one row.")
    k = math.floor(rate * n)
    if k == 0:  # fewer rows than 1/rate: shut the gate just above the largest
        return -float(z[0]) - 1e-3 * (1.0 + abs(float(z[0])))
    if k >= n:
        return -float(z[-1]) + 1e-3 * (1.0 + abs(float(z[-1])))
    return -0.5 * float(z[k - 1] + z[k])


@dataclass
class GateCalibration:
    """The bias calibration of :func:`calibrate_gates`: per gate, the bias before and after and the open share
    (gate ≥ 0.5) of each held-out group after; the binding group sits at ``rate``."""

    rate: float
    sharpness: float
    bias_before: list[float]
    bias_after: list[float]
    open_share: dict[str, list[float]]  # group ("own positives", "background") -> [T]
    rows: dict[str, list[int]]  # group -> held-out rows per gate

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "sharpness": self.sharpness, "bias_before": self.bias_before,
                "bias_after": self.bias_after,
                "open_share": self.open_share, "rows": self.rows}


def calibrate_gates(
    steerer: Steerer, held_positives: Sequence[torch.Tensor], background: torch.Tensor | None, rate: float,
    sharpness: float = 1.0,
) -> tuple[Steerer, GateCalibration]:
    """A copy of ``steerer`` with each gate's bias set so that its false-open rate is ``rate`` on held-out rows.

    held_positives: per gate t, attribute t's held-out positives ``[h_t, d]``; background ``[h, d]`` (or None):
    held-out background. Gate t's bias is the lower of :func:`calibrated_bias` on each group, so neither group
    opens more than ``rate``. θ is unchanged; W is multiplied by ``sharpness`` first (1: unchanged; > 1 makes each
    gate closer to a step at the same ranking, so shut tokens get ~0 and opened ones ~1 rather than ~0.3 / ~0.7).
    """
    out = copy.deepcopy(steerer)
    w, b = steerer.gate_weight.detach().float().cpu() * float(sharpness), steerer.gate_bias.detach().float().cpu()
    groups: dict[str, list[torch.Tensor]] = {"own positives": [x.detach().float().cpu() for x in held_positives]}
    if background is not None:
        groups["background"] = [background.detach().float().cpu()] * len(held_positives)
    after = []
    for t in range(steerer.num_attributes):
        after.append(min(calibrated_bias(rows[t] @ w[t] + b[t], float(b[t]), rate) for rows in groups.values()))
    with torch.no_grad():
        out.gate_weight.copy_(w)
        out.gate_bias.copy_(torch.tensor(after, dtype=out.gate_bias.dtype))
    share = {g: [float(((rows[t] @ w[t] + after[t]) >= 0).float().mean()) for t in range(len(after))]
             for g, rows in groups.items()}
    counts = {g: [int(rows[t].shape[0]) for t in range(len(after))] for g, rows in groups.items()}
    return out, GateCalibration(float(rate), float(sharpness), b.tolist(), after, share, counts)


def _initial_steerer(data: Sequence[AttributeData], config: TrainConfig, d: int,
                     device: torch.device) -> tuple[Steerer, torch.Tensor]:
    """The seeded initial steerer on ``device`` and its θ ``[T, d]`` before training (on the CPU)."""
    steerer = Steerer([a.name for a in data], d, [a.positive_side for a in data],
                      generator=torch.Generator().manual_seed(config.seed))
    if config.theta_init == "zero":
        with torch.no_grad():
            steerer.theta.zero_()
    theta_init = steerer.theta.detach().clone()
    steerer.to(device)
    return steerer, theta_init


def _raise_divergence(step_terms: torch.Tensor, epoch: int, names: list[str], params_ok: bool) -> None:
    """Find the first step and term that went NaN/Inf and raise :class:`TrainingError`."""
    bad = ~torch.isfinite(step_terms).cpu()  # [B, 5, T]
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
