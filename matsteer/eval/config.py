"""The comparison's settings: the methods it runs (in table order, which are seeded, which are baselines), their
labels, and :class:`EvalConfig` with its presets (:meth:`EvalConfig.full`, :meth:`EvalConfig.reference`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matsteer.core.config import TrainConfig
from matsteer.core.workflow import DemoConfig
from matsteer.errors import ConfigError
from matsteer.eval.cached_scoring import CACHED_POSITIONS
from matsteer.eval.tasks import PROBES, parse_sources

#: How each method is named in tables and figures.
METHOD_LABELS = {
    "none": "No steering", "random": "Random directions (MAT-Steer norms)", "icl": "Few-shot prompting (ICL)",
    "iti": "ITI mass-mean shift", "caa": "CAA mean difference", "pca": "PCA of paired differences",
    "probe_caa": "CAA with probe gates", "sum_single": "Sum of single-attribute MAT-Steer",
    "uniform_gates": "MAT-Steer vectors, uniform gates", "mat_steer": "MAT-Steer",
}

CONSTANT_LABEL = "Constant / majority answer (gold labels)"

#: Methods in the comparison, in table order. Those in SEEDED are trained (or, for "random", drawn and sized by
#: the MAT-Steer steerer of that seed), once per seed; the others are closed form or fixed (ICL's demonstrations,
#: PCA's pairing and the probes use seed 0), so they are scored once and their std is 0.
METHODS = ("none", "random", "icl", "iti", "caa", "pca", "probe_caa", "sum_single", "uniform_gates", "mat_steer")

#: The methods run once per seed (see METHODS).
SEEDED = frozenset({"random", "sum_single", "uniform_gates", "mat_steer"})

#: MAT-Steer and its own variants: never "the best baseline".
MAT_VARIANTS = frozenset({"sum_single", "uniform_gates", "mat_steer"})

#: References shown beside the methods, not candidates for the best baseline.
CONTROLS = frozenset({"none", "random"})

#: The methods the best baseline (by dev mean) is chosen from.
BASELINE_POOL = tuple(m for m in METHODS if m not in MAT_VARIANTS | CONTROLS)

#: The seed of what does not depend on one: ICL's demonstrations, PCA's pairing, the probes.
FIXED_SEED = 0


@dataclass
class EvalConfig:
    """What the default evaluation runs (with extraction, under 20 minutes on 2 CPU cores; README *Evaluation*);
    :meth:`full` uses the whole training and test splits.

    Every hyperparameter is chosen on the dev questions with the first seed, then kept for the other seeds:
    MAT-Steer's training setting (``training_candidates``, overrides of ``demo.train``) with its multiplier, each
    baseline's multiplier / α / number of shots. ``probes`` are scored on test beside the attribute tasks (not
    averaged, not used on dev). ``sources``: ``{task: local file}`` scored instead of the shipped data (dev and
    test parts of it, split as the shipped files are). ``steer_special``: steer the first token and special
    tokens too (an ablation; off by default).
    """

    demo: DemoConfig = field(default_factory=DemoConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    dev_limits: dict[str, int | None] = field(
        default_factory=lambda: {"truthfulqa": 30, "toxigen_pref": 45, "toxigen": 45, "bbq": 45})
    test_limits: dict[str, int | None] = field(
        default_factory=lambda: {"truthfulqa": 80, "toxigen_pref": 100, "toxigen": 160, "bbq": 100})
    multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    iti_alphas: tuple[float, ...] = (1.0, 2.0, 4.0)
    icl_shots: tuple[int, ...] = (1, 3)
    training_candidates: tuple[dict[str, Any], ...] = (
        {"lambda_pos": 0.9, "lambda_sparse": 0.9}, {"lambda_pos": 0.1, "lambda_sparse": 0.1})
    methods: tuple[str, ...] = METHODS
    probes: tuple[str, ...] = PROBES
    positions: str = "prompt"
    #: Where the steering methods act, as a dev grid (crossed with each one's multiplier / α); empty: every method
    #: steers ``positions``.
    position_grid: tuple[str, ...] = ()
    steer_special: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    out_dir: Path = Path("results")
    n_boot: int = 10000

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["demo"] = self.demo.to_dict()
        d["out_dir"] = str(self.out_dir)
        return d

    @classmethod
    def full(cls) -> EvalConfig:
        cfg = cls()
        cfg.demo.limits = dict.fromkeys(cfg.demo.limits)
        cfg.test_limits = dict.fromkeys(cfg.test_limits)
        return cfg

    @classmethod
    def reference(cls) -> EvalConfig:
        """The committed reference run (``results/reference/``): whole test splits; dev large enough to choose
        with (all 82 TruthfulQA dev questions, all 337 ToxiGen dev pairs, 400 of the 1,112 BBQ dev questions,
        stratified); every steering method's multiplier (or α) crossed with where it steers (the query or every
        token) on dev; MAT-Steer with the settled default training (docs/training.md); more training data than
        the demo (all ToxiGen training statements, 1,000 BBQ examples)."""
        cfg = cls()
        cfg.demo.limits = {"truthfulqa": None, "toxigen": None, "bbq": 1000}
        cfg.dev_limits = {"truthfulqa": None, "toxigen_pref": None, "toxigen": None, "bbq": 400}
        cfg.test_limits = dict.fromkeys(cfg.test_limits)
        cfg.multipliers = (1.0, 2.0, 4.0)
        cfg.position_grid = ("prompt", "all")
        cfg.training_candidates = ({},)
        cfg.out_dir = Path("results/reference")
        return cfg

    def validate(self) -> None:
        bad = [p for p in (self.positions, *self.position_grid) if p not in CACHED_POSITIONS]
        if bad:
            raise ConfigError(f"Unknown position policies {bad}; choose from {', '.join(CACHED_POSITIONS)}.")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
        if "mat_steer" not in self.methods:
            raise ConfigError("The comparison needs 'mat_steer' among the methods.")
        if not self.seeds or not self.training_candidates or not self.multipliers:
            raise ConfigError("seeds, training_candidates and multipliers must each hold at least one value.")
        parse_sources(self.sources)
        for cand in self.training_candidates:
            TrainConfig(**{**self.demo.train.to_dict(), **cand}).validate()
