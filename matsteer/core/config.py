"""Training settings: :class:`TrainConfig`, its validation and the named presets (``default``, ``paper``, ``reference``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from matsteer.activations.models import resolve_device
from matsteer.core.losses import GATE_SCOPES, VARIANTS
from matsteer.errors import ConfigError

#: Named settings one flag away (``TrainConfig.preset(name)``, ``matsteer train --preset NAME``). ``default`` is
#: the workbench's choice (docs/training.md says why); ``paper`` and ``reference`` are the paper's and the public
#: code's exact settings (σ = 2, no gate supervision, raw gate input, θ ~ randn). ``targeted`` is the default plus
#: the background gate term, ``targeted-calibrated`` that and the post-training bias calibration at a 10 %
#: false-open rate (docs/training.md, "Gates that target"); both need background activations
#: (``train_steerer(..., background=...)``).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "targeted": {"lambda_background": 1.0},
    "targeted-calibrated": {"lambda_background": 1.0, "calibrate_fpr": 0.1},
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
    - ``gate_loss="supervised"`` with ``lambda_gate``: the logistic gate term of :mod:`matsteer.core.losses` (not the
      paper's), over ``gate_scope`` ("cross": each gate also kept shut on the other attributes' rows).
    - ``theta_init="zero"``: θ starts at 0 instead of ``randn(d)`` (‖randn‖ ≈ √d is arbitrary against activation
      norms of ~150), and ``theta_lr="std"`` gives θ steps in the activations' units.
    - ``sigma="median"`` (σ = 2 is a dead kernel on raw activations) and λ_pos = λ_sparse = 0.1.

    Off by default (preset ``targeted``): ``lambda_background`` > 0 keeps every gate shut on background rows
    (neutral text, template tokens: ``train_steerer(..., background=[N, d])``), ``background_per_batch`` of them
    per step; ``calibrate_fpr`` moves each gate's bias after training so that at most that share of held-out own
    positives and of held-out background opens the gate (≥ 0.5), on a seeded ``calibration_share`` of the training
    positives and background that training then does not see (after multiplying W by ``calibrate_sharpness``).
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
    lambda_background: float = 0.0  # weight of the background gate term (0 = off, today's default and the paper)
    background_per_batch: int = 32  # background rows drawn per step (with replacement, seeded)
    calibrate_fpr: float | None = None  # target false-open rate of the bias calibration (None = off)
    calibration_share: float = 0.2  # share of training positives / background held out for the calibration
    calibrate_sharpness: float = 1.0  # the calibration first multiplies W by this (> 1: closer to a step gate)
    loss_variant: str = "paper"  # or "reference"; see matsteer.core.losses
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
        """The named settings of :data:`PRESETS` (``default``, ``targeted``, ``targeted-calibrated``, ``paper``,
        ``reference``), then ``overrides``."""
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
        if not positive_number(self.lr):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}; pass e.g. lr=1e-3.")
        if self.theta_lr is not None and self.theta_lr != "std" and not positive_number(self.theta_lr):
            raise ConfigError(f"theta_lr must be 'std', a positive number or None, got {self.theta_lr!r}.")
        if isinstance(self.sigma, str):
            if self.sigma != "median":
                raise ConfigError(f"sigma must be a positive number or 'median', got {self.sigma!r}.")
        elif not positive_number(self.sigma):
            raise ConfigError(
                f"sigma must be > 0 (the Gaussian kernel width), got {self.sigma!r}. "
                "Use e.g. sigma=2.0 or sigma='median'."
            )
        for name, value in self.lambdas().items():
            if not finite_number(value) or value < 0:
                raise ConfigError(f"lambda_{name} must be a finite number ≥ 0, got {value!r}; pass a weight ≥ 0 "
                                  "(0 turns that loss term off).")
        for name, choice, allowed in (("loss_variant", self.loss_variant, VARIANTS),
                                      ("gate_input", self.gate_input, GATE_INPUTS),
                                      ("gate_loss", self.gate_loss, GATE_LOSSES),
                                      ("gate_scope", self.gate_scope, GATE_SCOPES),
                                      ("theta_init", self.theta_init, THETA_INITS)):
            if choice not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {choice!r}.")
        if not finite_number(self.lambda_background) or self.lambda_background < 0:
            raise ConfigError(f"lambda_background must be a finite number ≥ 0, got {self.lambda_background!r}.")
        if not is_int(self.background_per_batch) or self.background_per_batch < 1:
            raise ConfigError(f"background_per_batch must be an integer ≥ 1, got {self.background_per_batch!r}.")
        if self.calibrate_fpr is not None and not (finite_number(self.calibrate_fpr) and 0 < self.calibrate_fpr < 1):
            raise ConfigError(f"calibrate_fpr must be None or a rate in (0, 1), got {self.calibrate_fpr!r}; pass "
                              "e.g. 0.05.")
        if not positive_number(self.calibrate_sharpness):
            raise ConfigError(f"calibrate_sharpness must be a positive number, got {self.calibrate_sharpness!r}.")
        if not (finite_number(self.calibration_share) and 0 < self.calibration_share < 1):
            raise ConfigError(f"calibration_share must be in (0, 1), got {self.calibration_share!r}; pass e.g. 0.2.")
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


def finite_number(v: Any) -> bool:
    """A real number that is not a bool, NaN or ±inf."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_number(v: Any) -> bool:
    """A finite real number > 0 (not a bool)."""
    return finite_number(v) and v > 0
