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
    "none": "No steering", "random": "Random directions (MAT-Steer norms)",
    "temperature": "Temperature (no steering)", "temperature_len": "Temperature + length normalisation (no steering)",
    "icl": "Few-shot prompting (ICL)", "lora_sft": "LoRA SFT (one adapter, all attributes)",
    "lora_dpo": "LoRA DPO (one adapter, all attributes)",
    "loreft": "LoReFT (rank 4, one intervention, all attributes)",
    "icv": "ICV (PCA of paired demonstrations, renormalised)", "nl_iti": "NL-ITI (ITI shift behind MLP-probe gates)",
    "iti": "ITI mass-mean shift", "caa": "CAA mean difference", "pca": "PCA of paired differences",
    "probe_caa": "CAA with probe gates", "sum_single": "Sum of single-attribute MAT-Steer",
    "uniform_gates": "MAT-Steer vectors, uniform gates", "mat_steer": "MAT-Steer",
    "icl_mat_steer": "ICL + MAT-Steer", "sft_mat_steer": "LoRA SFT + MAT-Steer (trained on the adapted model)",
    "dpo_mat_steer": "LoRA DPO + MAT-Steer (trained on the adapted model)",
}

CONSTANT_LABEL = "Constant / majority answer (gold labels)"

#: Methods in the comparison, in table order. Those in SEEDED are trained (or, for "random", drawn and sized by
#: the MAT-Steer steerer of that seed), once per seed; the others are closed form or fixed (ICL's demonstrations,
#: PCA's pairing and the probes use seed 0), so they are scored once and their std is 0. "temperature" is the
#: unsteered model with its next-token logits divided by a dev-chosen T (a gain it matches is calibration, not
#: steering); "temperature_len" the same with each answer's log-prob divided by its token count.
METHODS = ("none", "random", "temperature", "temperature_len", "icl", "lora_sft", "lora_dpo", "loreft", "iti", "nl_iti",
           "caa", "pca", "icv", "probe_caa", "sum_single", "uniform_gates", "mat_steer", "icl_mat_steer",
           "sft_mat_steer", "dpo_mat_steer")

#: The paper's Table 9: MAT-Steer on top of another method, by the row it builds on. ICL + MAT-Steer steers the
#: demonstration-prefixed prompts with the comparison's MAT-Steer; SFT / DPO + MAT-Steer trains MAT-Steer on the
#: LoRA-adapted model's own activations (features extracted from that model) and steers it. Their grid crosses the
#: multiplier with the row's own (ICL's shots, the LoRA learning rate and steps). Not in the default method list:
#: ``--add`` them, or name them in ``EvalConfig.methods``.
COMBINED = {"icl_mat_steer": "icl", "sft_mat_steer": "lora_sft", "dpo_mat_steer": "lora_dpo"}

#: The training-candidate key that picks which tokens MAT-Steer trains on ("answer" or "all": every token of x‖y,
#: the paper's §2.2), beside TrainConfig's fields: ``training_candidates=({}, {"tokens": "all"})`` chooses it on dev.
TRAIN_TOKENS = "tokens"

#: The methods run once per seed (see METHODS).
SEEDED = frozenset({"random", "lora_sft", "lora_dpo", "loreft", "sum_single", "uniform_gates", "mat_steer", *COMBINED})

#: The fine-tuning baselines (matsteer.core.finetune): a LoRA adapter on the same training data, merged into a copy
#: of the model that then answers every task (no steering; the paper's SFT and DPO rows).
FINETUNED = {"lora_sft": "sft", "lora_dpo": "dpo"}

#: The representation fine-tuning baseline (matsteer.core.reft): one LoReFT intervention at the comparison's site
#: trained on the LoRA SFT row's data, scored as an edit of the site activations like the steering baselines (under
#: each protocol's positions, with side effects); no MAT-Steer multiplier (its own strength is trained).
REFT = frozenset({"loreft"})

#: MAT-Steer, its own variants and its combinations: never "the best baseline".
MAT_VARIANTS = frozenset({"sum_single", "uniform_gates", "mat_steer", *COMBINED})

#: References shown beside the methods, not candidates for the best baseline.
CONTROLS = frozenset({"none", "random", "temperature", "temperature_len"})

#: The temperature controls (no steering; only the softmax temperature of the scorer changes).
TEMPERATURE_CONTROLS = ("temperature", "temperature_len")

#: The methods whose scores do not depend on which tokens are steered (they steer none): scored once and shared by
#: every protocol of a comparison.
PROTOCOL_FREE = frozenset({"none", *TEMPERATURE_CONTROLS, "icl", *FINETUNED})

#: The methods that edit the site activations: their layer is chosen on dev when ``EvalConfig.layers`` is set.
LAYERED = tuple(m for m in METHODS if m not in PROTOCOL_FREE)

#: The methods the best baseline (by dev mean) is chosen from.
BASELINE_POOL = tuple(m for m in METHODS if m not in MAT_VARIANTS | CONTROLS)

#: The seed of what does not depend on one: ICL's demonstrations, PCA's and ICV's pairing, the probes (NL-ITI's
#: MLP probes too).
FIXED_SEED = 0


@dataclass
class EvalConfig:
    """What the default evaluation runs (README *Evaluation*; the LoRA rows alone train for about 20 minutes on a
    2-core CPU, which is why the demo leaves them out); :meth:`full` uses the whole training and test splits.

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
    #: NL-ITI's α (matsteer.core.baselines.nl_iti), as ITI's.
    nl_iti_alphas: tuple[float, ...] = (1.0, 2.0, 4.0)
    #: ICV's λ (times the mean norm of the demonstrations' states; matsteer.core.baselines.in_context_vector),
    #: carried as the multiplier so that the grid extends along it.
    icv_lambdas: tuple[float, ...] = (0.05, 0.1, 0.2)
    icl_shots: tuple[int, ...] = (1, 3)
    #: The fine-tuning baselines' dev grid (matsteer.core.finetune.FinetuneConfig fields; the paper's setting
    #: first) and the settings they all share (e.g. {"beta": 0.1} for DPO, {"rank": 8}). On a 2-core CPU one
    #: step of 16 takes about 20-30 s for SFT and 60-80 s for DPO, so the grid is kept to 10 steps.
    finetune_grid: tuple[dict[str, Any], ...] = ({"lr": 5e-6, "steps": 10}, {"lr": 1e-4, "steps": 10})
    finetune: dict[str, Any] = field(default_factory=dict)
    #: LoReFT's dev grid (matsteer.core.reft.ReftConfig fields over its defaults: rank 4, batch 16, the prompt
    #: tokens intervened).
    reft_grid: tuple[dict[str, Any], ...] = ({"lr": 1e-3, "steps": 20}, {"lr": 4e-3, "steps": 20})
    #: The temperature controls' dev grid (geometric; T = 1 is the unsteered model itself).
    temperatures: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
    #: Dev selection keeps the settings whose mean next-token KL on neutral text is at most this (nats; None: no
    #: budget), then takes the best dev mean (matsteer.eval.selection).
    kl_budget: float | None = None
    #: While a choice sits at an edge of its strength's grid (multiplier, α, T), the grid grows past it by
    #: grid_factor, at most grid_extensions times.
    grid_extensions: int = 2
    grid_factor: float = 2.0
    #: The layers every steering method (each method that edits the site activations, LoReFT included) chooses
    #: from on dev, e.g. (10, 14, 18, 22); empty: every method at ``demo.layer``. Each layer has its own training
    #: features, MAT-Steer, dev and test questions (cached per layer); a method's layer is the one whose best dev
    #: trial (within the KL budget) is best, scored on the halving search's dev subset when ``search`` is
    #: "halving", and its setting is then tuned and tested at that layer.
    layers: tuple[int, ...] = ()
    #: How dev is searched: "grid" scores every setting on the whole dev set; "halving" (successive halving, one
    #: round) scores every setting, edge extensions included, on a seeded ``halving_fraction`` of each dev task
    #: and re-scores only the ``halving_keep`` best (within the KL budget) on the whole dev set, where the choice
    #: is made. The neutral-text KL is the same text in both stages.
    search: str = "grid"
    halving_fraction: float = 0.25
    halving_keep: int = 2
    training_candidates: tuple[dict[str, Any], ...] = (
        {"lambda_pos": 0.9, "lambda_sparse": 0.9}, {"lambda_pos": 0.1, "lambda_sparse": 0.1})
    methods: tuple[str, ...] = tuple(m for m in METHODS if m not in COMBINED)
    probes: tuple[str, ...] = PROBES
    positions: str = "prompt"
    #: Where the steering methods act, as a dev grid (crossed with each one's multiplier / α); empty: every method
    #: steers ``positions``.
    position_grid: tuple[str, ...] = ()
    #: Scoring protocols (position policies), each with its own dev selection and table; the first is the primary
    #: one (``report["methods"]``), the others go to ``report["protocols"]``. Empty: one comparison over
    #: ``position_grid`` (or ``positions``).
    protocols: tuple[str, ...] = ()
    #: Norm preservation (rescale each edited activation to ‖a‖) as a dev grid dimension of every steering method;
    #: empty: closed-form baselines add their vectors as they are and MAT-Steer's family preserves the norm.
    norm_grid: tuple[bool, ...] = ()
    steer_special: bool = False
    #: A finished comparison's ``eval.json`` whose dev choices this run borrows instead of searching dev itself
    #: (matsteer.eval.selection.borrowed_choices: per protocol, MAT-Steer's training setting and every method's
    #: setting); methods it did not score are tuned on this run's dev as usual. None: every choice made here.
    settings_from: str | None = None
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

    @classmethod
    def protocol_reference(cls) -> EvalConfig:
        """The reference comparison as a reviewer asks for it (not yet run; ``matsteer compare --protocol-reference
        --plan`` counts its work): :meth:`reference`'s data and sizes, one table per protocol with the paper's
        (steer the query) first, five seeds, geometric strength grids from 0.25 to 16 that grow past an edge,
        norm preservation as a grid dimension, every steering method's layer chosen on dev from 10 / 14 / 18 / 22,
        selection within a neutral-text KL budget of 0.5 nats, the halving search, and MAT-Steer's training chosen
        on dev within each protocol from today's default, its gates also trained shut on background text
        (``targeted``) and training on every token of x‖y (the paper's §2.2) instead of the answer tokens."""
        cfg = cls.reference()
        cfg.seeds = (0, 1, 2, 3, 4)
        cfg.position_grid, cfg.protocols = (), ("prompt", "generated", "all")
        cfg.multipliers = cfg.iti_alphas = cfg.nl_iti_alphas = (0.25, 1.0, 4.0, 16.0)
        cfg.icv_lambdas = (0.025, 0.1, 0.4)
        cfg.norm_grid = (True, False)
        cfg.layers = (10, 14, 18, 22)
        cfg.kl_budget = 0.5
        cfg.search = "halving"
        cfg.training_candidates = ({}, {"lambda_background": 1.0}, {TRAIN_TOKENS: "all"})
        cfg.out_dir = Path("results/protocol-reference")
        return cfg

    def validate(self) -> None:
        bad = [p for p in (self.positions, *self.position_grid, *self.protocols) if p not in CACHED_POSITIONS]
        if self.protocols and self.position_grid:
            raise ConfigError("Give protocols (one table each) or position_grid (positions chosen on dev within one "
                              "table), not both.")
        if bad:
            raise ConfigError(f"Unknown position policies {bad}; choose from {', '.join(CACHED_POSITIONS)}.")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
        if "mat_steer" not in self.methods:
            raise ConfigError("The comparison needs 'mat_steer' among the methods.")
        if not self.seeds or not self.training_candidates or not self.multipliers or not self.temperatures:
            raise ConfigError("seeds, training_candidates, multipliers and temperatures must each hold at least one "
                              "value.")
        if any(not t > 0 for t in self.temperatures):
            raise ConfigError(f"Temperatures must be positive, got {self.temperatures}.")
        if self.kl_budget is not None and not self.kl_budget > 0:
            raise ConfigError(f"kl_budget must be positive (nats) or None, got {self.kl_budget}.")
        if any(not isinstance(n, int) or n < 0 for n in self.layers) or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers must be distinct layer indices >= 0, got {self.layers}.")
        if self.search not in ("grid", "halving"):
            raise ConfigError(f"search must be 'grid' or 'halving', got {self.search!r}.")
        if not 0 < self.halving_fraction < 1 or self.halving_keep < 1:
            raise ConfigError(f"halving_fraction must be in (0, 1) and halving_keep >= 1, got {self.halving_fraction} "
                              f"and {self.halving_keep}.")
        if self.grid_extensions < 0 or not self.grid_factor > 1:
            raise ConfigError(f"grid_extensions must be >= 0 and grid_factor > 1, got {self.grid_extensions} and "
                              f"{self.grid_factor}.")
        parse_sources(self.sources)
        if self.settings_from is not None and not Path(self.settings_from).is_file():
            raise ConfigError(f"settings_from={self.settings_from}: no such file. Give a finished comparison's "
                              "eval.json (e.g. results/reference/eval.json), or leave it unset to tune on dev.")
        for cand in self.training_candidates:
            if cand.get(TRAIN_TOKENS, "answer") not in ("answer", "all"):
                raise ConfigError(f"training_candidates: tokens must be 'answer' or 'all', got {cand[TRAIN_TOKENS]!r}.")
            TrainConfig(**{**self.demo.train.to_dict(), **{k: v for k, v in cand.items() if k != TRAIN_TOKENS}}
                        ).validate()


def method_grid(cfg: EvalConfig, name: str) -> list[dict[str, Any]]:
    """The dev grid of a method's run-time hyperparameters under ``cfg``: its strength (multiplier, α, T or shots;
    LoReFT's training settings, ``cfg.reft_grid``; the LoRA rows' ``cfg.finetune_grid``), crossed for steering
    methods with ``cfg.position_grid`` and ``cfg.norm_grid`` where those are set; Table 9's rows cross MAT-Steer's
    grid with the grid of the row they build on."""
    if name == "none":
        return [{}]
    if name == "icl":
        return [{"shots": k} for k in cfg.icl_shots]
    if name in TEMPERATURE_CONTROLS:
        return [{"temperature": t} for t in cfg.temperatures]
    if name in FINETUNED:
        return [dict(p) for p in cfg.finetune_grid]
    if name in COMBINED:
        return [{**own, **mat} for own in method_grid(cfg, COMBINED[name]) for mat in method_grid(cfg, "mat_steer")]
    strength = {"iti": ("alpha", cfg.iti_alphas), "nl_iti": ("alpha", cfg.nl_iti_alphas),
                "icv": ("multiplier", cfg.icv_lambdas)}
    key, grid = strength.get(name, ("multiplier", cfg.multipliers))
    # LoReFT's strength is trained: its grid is its training settings, crossed like the others'.
    values: list[dict[str, Any]] = [dict(p) for p in cfg.reft_grid] if name in REFT else [{key: v} for v in grid]
    values = [{**v, "positions": p} for p in cfg.position_grid for v in values] or values
    return [{**v, "preserve_norm": n} for n in cfg.norm_grid for v in values] or values
