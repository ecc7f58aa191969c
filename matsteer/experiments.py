"""The paper's comparison on the default model: every method trained on the same features, tuned on dev only,
scored on the held-out test questions over several seeds, beside reference rows, with side effects and a
bootstrap over questions and seeds.

``run_evaluation(EvalConfig())`` writes ``results/eval.json`` and ``results/eval.md`` (schema:
``docs/eval-schema.md``).

Reference rows: the constant / majority answer of every task from its gold labels
(:func:`matsteer.evaluate.constant_row`), no steering, and random directions with MAT-Steer's norms (a control
that pushes as hard as MAT-Steer in a meaningless direction). A method at or below the constant on a task is
marked in ``eval.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .baselines import (
    mass_mean_shift,
    mean_difference,
    pca_of_differences,
    probe_gated_mean_difference,
    random_direction_steerer,
    sum_of_single,
    uniform_gates,
)
from .errors import ConfigError
from .evaluate import DATA_OF, PRIMARY, PROBES, TASKS, Evaluator, Method, few_shot_prefix, parse_sources
from .health import training_health
from .io import write_json
from .pipeline import DemoConfig, attribute_data, extract_splits
from .scoring import CACHED_POSITIONS
from .sites import Site
from .stats import mean_std, minimum_detectable_effect, seed_question_bootstrap, seed_question_bootstrap_tasks
from .steerer import Steerer
from .train import TrainConfig, TrainResult, train

#: Llama-3.1-8B, layer 14, the paper's Table 1 (TruthfulQA MC2 / ToxiGen / BBQ accuracy, %). For orientation only:
#: the paper's ToxiGen and BBQ numbers are plain accuracies, not our preference and balanced metrics.
PAPER_TABLE1 = {
    "none": (49.91, 48.10, 51.77), "icl": (55.32, 51.26, 56.46), "iti": (52.68, 52.55, 53.45),
    "mat_steer": (61.94, 57.59, 60.32),
}
#: The paper's Table 4 "All tokens (uniform)" row (its caption says Llama-3.1-8B; its base row is Qwen2.5-7B's).
PAPER_TABLE4_UNIFORM = (58.09, 55.92, 59.74)

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
SEEDED = frozenset({"random", "sum_single", "uniform_gates", "mat_steer"})
#: MAT-Steer and its own variants: never "the best baseline".
MAT_VARIANTS = frozenset({"sum_single", "uniform_gates", "mat_steer"})
#: References shown beside the methods, not candidates for the best baseline.
CONTROLS = frozenset({"none", "random"})
#: The methods the best baseline (by dev mean) is chosen from.
BASELINE_POOL = tuple(m for m in METHODS if m not in MAT_VARIANTS | CONTROLS)
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


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's shape, dtype and bytes (any dtype, any device)."""
    t = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TensorDigests:
    """:func:`tensor_digest` remembered per tensor object (and in-place version), so that asking for the key of
    the same training features again costs nothing; a tensor that is gone or changed is hashed afresh."""

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, int, str]] = {}

    def __call__(self, x: torch.Tensor) -> str:
        hit = self._memo.get(id(x))
        if hit is not None and hit[0]() is x and hit[1] == x._version:
            return hit[2]
        digest = tensor_digest(x)
        self._memo[id(x)] = (weakref.ref(x), x._version, digest)
        return digest


def data_fingerprint(data: Sequence[Any], digest: Callable[[torch.Tensor], str] = tensor_digest) -> str:
    """One hash of training data (:class:`~matsteer.train.AttributeData` records): names, positive sides and the
    bytes of every positive and negative tensor. Features of another layer, another subsample or another
    extraction have the same row counts but never the same fingerprint."""
    h = hashlib.sha256()
    for a in data:
        h.update(f"{a.name}|{getattr(a, 'positive_side', '')}".encode())
        h.update(digest(a.positives).encode())
        h.update(digest(a.negatives).encode())
    return h.hexdigest()


def steerer_key(seed: int, overrides: Mapping[str, Any] | None, site: Site, fingerprint: str) -> str:
    """The memo key of a trained steerer: seed, training overrides, site and data fingerprint."""
    return _key(seed, dict(overrides or {}), site.to_dict(), fingerprint)


class Experiment:
    """Holds the model, features and evaluators so that methods and ablations share one set-up.

    Trained steerers and dev scores are memoised, so a setting asked for twice is trained and scored once.
    """

    def __init__(self, cfg: EvalConfig, progress: bool = True, on_step: Callable[[str], None] | None = None) -> None:
        from .models import load_model
        from .provenance import git_commit

        self.commit = git_commit()  # the code this run starts from (the checkout may change while it runs)
        self.cfg, self.progress = cfg, progress
        self.on_step = on_step or _quiet
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.loaded = load_model(cfg.demo.model, dtype=cfg.demo.dtype, progress=progress)
        self.site = Site(cfg.demo.layer, cfg.demo.site)
        self.train_sets = extract_splits(self.loaded, cfg.demo, "train", cfg.demo.limits, progress)
        self.timings["extract_s"] = time.perf_counter() - t0
        self.train_data = [attribute_data(fs) for fs in self.train_sets]
        # Dev activations: the training-health report of every MAT-Steer in the comparison.
        self.dev_data = [attribute_data(fs) for fs in
                         extract_splits(self.loaded, cfg.demo, "dev", cfg.demo.dev_limits, progress)]
        self.timings["extract_s"] = time.perf_counter() - t0
        self.contrasts = {a.name: (a.positives, a.negatives) for a in self.train_data}
        self.dev = Evaluator(self.loaded, self.site, "dev", cfg.dev_limits, positions=cfg.positions,
                             progress=progress, sources=cfg.sources)
        self.test = Evaluator(self.loaded, self.site, "test", cfg.test_limits, probes=cfg.probes,
                              positions=cfg.positions, progress=progress, sources=cfg.sources)
        self._trained: dict[str, TrainResult] = {}
        self._fixed: dict[str, Steerer] = {}
        self._digests = TensorDigests()
        self._dev_results: dict[str, dict[str, Any]] = {}

    def _timed(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    # -- training ---------------------------------------------------------------------------------------------
    def train_config(self, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
        return TrainConfig(**{**self.cfg.demo.train.to_dict(), **(overrides or {}), "seed": seed})

    def steerer(self, seed: int, overrides: dict[str, Any] | None = None, data: Sequence[Any] | None = None,
                site: Site | None = None) -> Steerer:
        """MAT-Steer trained on ``data`` (default: every attribute's training features), memoised by seed,
        overrides, site (default: the experiment's) and a fingerprint of the data itself, so that features of
        another layer or subsample train their own steerer even with the same row counts."""
        return self.trained(seed, overrides, data, site).steerer

    def trained(self, seed: int, overrides: dict[str, Any] | None = None, data: Sequence[Any] | None = None,
                site: Site | None = None) -> TrainResult:
        """The memoised training result behind :meth:`steerer` (σ used and θ's initialisation included)."""
        data = list(data or self.train_data)
        key = steerer_key(seed, overrides, site or self.site, data_fingerprint(data, self._digests))
        if key not in self._trained:
            t0 = time.perf_counter()
            self._trained[key] = train(data, self.train_config(seed, overrides), progress=False)
            self._timed("train_s", t0)
        return self._trained[key]

    def health(self, seed: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Training health (:mod:`matsteer.health`) of the joint MAT-Steer of ``seed`` on the dev activations."""
        result = self.trained(seed, overrides)
        return training_health(result.steerer, self.dev_data, sigma=result.sigma_used,
                               theta_init=result.theta_init, seed=seed).to_dict()

    def same_steps(self, overrides: dict[str, Any] | None, data: Sequence[Any]) -> dict[str, Any]:
        """``overrides`` with the epochs that give training on ``data`` the optimizer steps of the joint training.

        An epoch has ``ceil(smallest side / batch_per_side)`` steps, so one large attribute alone would otherwise
        train ten times longer than it does inside the joint steerer (and cost ten times the time).
        """
        cfg = self.train_config(0, overrides)

        def steps(ds: Sequence[Any]) -> int:
            return math.ceil(min(min(a.positives.shape[0], a.negatives.shape[0]) for a in ds) / cfg.batch_per_side)

        return {**(overrides or {}), "epochs": max(1, round(cfg.epochs * steps(self.train_data) / steps(data)))}

    def _probe_caa(self) -> Steerer:
        """CAA vectors behind logistic-probe gates at multiplier 1, fitted once (the multiplier scales θ only, so
        it is applied as the global multiplier: the same edit without refitting the probes)."""
        if "probe_caa" not in self._fixed:
            self._fixed["probe_caa"] = probe_gated_mean_difference(self.contrasts, 1.0, seed=FIXED_SEED)
        return self._fixed["probe_caa"]

    # -- methods ----------------------------------------------------------------------------------------------
    def method(self, name: str, params: dict[str, Any], seed: int, overrides: dict[str, Any] | None = None) -> Method:
        """One method at ``params`` (its multiplier / α / shots) for ``seed``; MAT-Steer-based methods train with
        ``overrides`` of the training config."""
        c, m = self.contrasts, params.get("multiplier", 1.0)
        special = {"steer_special": self.cfg.steer_special, "positions": params.get("positions")}
        if name == "none":
            return Method(name)
        if name == "icl":
            tasks = dict.fromkeys((*TASKS, *PROBES, *self.test.all_tasks))
            return Method(name, prefix={t: few_shot_prefix(t, params["shots"], FIXED_SEED) for t in tasks},
                          params=params)
        if name == "iti":
            return Method(name, mass_mean_shift(c, params["alpha"]), preserve_norm=False, params=params, **special)
        if name == "caa":
            return Method(name, mean_difference(c, m), preserve_norm=False, params=params, **special)
        if name == "pca":
            return Method(name, pca_of_differences(c, m, seed=FIXED_SEED), preserve_norm=False, params=params,
                          **special)
        if name == "probe_caa":
            return Method(name, self._probe_caa(), global_multiplier=m, preserve_norm=False, params=params,
                          **special)
        if name == "random":
            # As hard a push as MAT-Steer's at this seed (its ‖θ_t‖), in random directions, gates always on.
            mat = self.steerer(seed, overrides)
            norms = mat.theta.detach().norm(dim=1)
            return Method(name, random_direction_steerer(mat.attributes, mat.d, norms, seed=seed),
                          global_multiplier=m, params=params, **special)
        if name == "mat_steer":
            return Method(name, self.steerer(seed, overrides), global_multiplier=m, params=params, **special)
        if name == "uniform_gates":
            return Method(name, uniform_gates(self.steerer(seed, overrides)), global_multiplier=m, params=params,
                          **special)
        if name == "sum_single":
            singles = [self.steerer(seed, self.same_steps(overrides, [a]), [a]) for a in self.train_data]
            return Method(name, sum_of_single(singles), global_multiplier=m, params=params, **special)
        raise ConfigError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.")

    def grid(self, name: str) -> list[dict[str, Any]]:
        """The dev grid of a method's run-time hyperparameter."""
        if name == "none":
            return [{}]
        if name == "icl":
            return [{"shots": k} for k in self.cfg.icl_shots]
        values = [{"alpha": a} for a in self.cfg.iti_alphas] if name == "iti" else \
            [{"multiplier": m} for m in self.cfg.multipliers]
        return [{**v, "positions": p} for p in self.cfg.position_grid for v in values] or values

    def dev_result(self, name: str, params: dict[str, Any], seed: int,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        key = _key(name, params, seed if name in SEEDED else None, overrides if name in SEEDED else None)
        if key not in self._dev_results:
            t0 = time.perf_counter()
            self._dev_results[key] = self.dev.evaluate(self.method(name, params, seed, overrides))
            self._timed("dev_eval_s", t0)
        return self._dev_results[key]

    def tune(self, name: str, seed: int, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], list]:
        """The grid value with the best dev mean (ties: the first), and every trial (dev mean and KL; the KL is
        None for methods that do not edit activations)."""
        extra = f" with training setting {overrides}" if name == "mat_steer" and overrides else ""
        self.on_step(f"comparison: dev: tuning {name}{extra}")
        trials = []
        for params in self.grid(name):
            res = self.dev_result(name, params, seed, overrides)
            trials.append({"params": params, "dev_mean": res["mean"], "dev_kl": res["side_effects"]["kl"],
                           **{t: res[t][PRIMARY[t]] for t in self.dev.tasks}})
        best = max(range(len(trials)), key=lambda i: (trials[i]["dev_mean"], -i))
        return trials[best]["params"], trials

    def test_result(self, method: Method) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self.test.evaluate(method)
        self._timed("test_eval_s", t0)
        return out


def select_training_default(ex: Experiment) -> dict[str, Any]:
    """Each training candidate trained with the first seed, its multiplier tuned on dev; the best is kept."""
    seed = ex.cfg.seeds[0]
    trials = []
    for cand in ex.cfg.training_candidates:
        params, grid = ex.tune("mat_steer", seed, cand)
        trials.append({"overrides": cand, "dev_mean": max(g["dev_mean"] for g in grid), "params": params,
                       "grid": grid})
    best = max(range(len(trials)), key=lambda i: (trials[i]["dev_mean"], -i))
    return {"trials": trials, "chosen": trials[best]}


def _number(value: Any) -> float | None:
    """A metric value as a float, or None where it is undefined (None or NaN: e.g. a bias score with no
    non-unknown answer, or a class with no question)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _mean_std_or_none(values: Sequence[Any]) -> dict[str, float] | None:
    """Mean ± std over the seeds where the metric is defined; None where it is defined for none."""
    defined = [v for v in (_number(x) for x in values) if v is not None]
    return asdict(mean_std(defined)) if defined else None


def _summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every metric (None where undefined), with ``per_item`` kept per seed.

    Per task: each metric as ``{mean, std, n}`` (n = seeds where defined) or None; ``n`` and ``counts`` as
    they are; text (a constant's ``answer``) as it is; ``per_item`` as ``[seeds][questions]``, the per-question
    primary scores of every seed (a bootstrap over questions and seeds needs them unaveraged).
    """
    out: dict[str, Any] = {}
    tasks = [k for k in per_seed[0] if k not in ("mean", "side_effects")]
    for task in tasks:
        entry: dict[str, Any] = {}
        for k, v in per_seed[0][task].items():
            if k == "per_item":
                entry[k] = [[float(x) for x in r[task][k]] for r in per_seed]
            elif k in ("n", "counts") or isinstance(v, str):
                entry[k] = v
            else:
                entry[k] = _mean_std_or_none([r[task][k] for r in per_seed])
        out[task] = entry
    out["mean"] = _mean_std_or_none([r["mean"] for r in per_seed])
    out["side_effects"] = {k: _mean_std_or_none([r["side_effects"][k] for r in per_seed])
                           for k in per_seed[0]["side_effects"]}
    return out


def _per_item(entry: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, list[list[float]]]:
    return {t: entry["test"][t]["per_item"] for t in tasks}


def comparison_intervals(
    methods: Mapping[str, Mapping[str, Any]], reference: str, tasks: Sequence[str], probes: Sequence[str] = (),
    n_boot: int = 10000, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Every method minus ``reference``: a bootstrap over questions and seeds
    (:func:`matsteer.stats.seed_question_bootstrap_tasks`) per attribute task, for their mean (``"mean"``) and
    per probe. methods: ``report["methods"]`` (each with ``test[task]["per_item"]`` of shape ``[seeds, n]``)."""
    ref = methods[reference]
    out: dict[str, dict[str, Any]] = {}
    for name, entry in methods.items():
        if name == reference:
            continue
        cis = seed_question_bootstrap_tasks(_per_item(entry, tasks), _per_item(ref, tasks), n_boot, seed=seed)
        row = {k: asdict(ci) for k, ci in cis.items()}
        for probe in probes:
            row[probe] = asdict(seed_question_bootstrap(entry["test"][probe]["per_item"],
                                                        ref["test"][probe]["per_item"], n_boot, seed=seed))
        out[name] = row
    return out


#: The rule behind ``report["detectable"]`` (also printed under the table).
DETECTABLE_RULE = ("smallest true difference a two-sided test at 5% detects with 80% power: "
                   "(z_0.975 + z_0.8) * sqrt(2 s^2 / n), s^2 the per-question variance of no steering's primary "
                   "scores (for the mean: sqrt(2 sum_t s_t^2 / n_t) / T); treats the two methods as independent, "
                   "an upper bound for paired questions")


def detectable_differences(entry: Mapping[str, Any], tasks: Sequence[str], probes: Sequence[str] = (),
                           n_boot: int = 10000, alpha: float = 0.05, power: float = 0.8) -> dict[str, Any]:
    """What the test sizes can resolve, from one method's (no steering's) first-seed per-question scores: the
    power-based minimum detectable effect per task and for the mean (see :data:`DETECTABLE_RULE`), and the
    half-width of that method's own 95% bootstrap interval."""
    first = {t: entry["test"][t]["per_item"][0] for t in (*tasks, *probes)}
    mde = {t: minimum_detectable_effect(first[t], alpha, power) for t in (*tasks, *probes)}
    mde["mean"] = minimum_detectable_effect({t: first[t] for t in tasks}, alpha, power)
    own = seed_question_bootstrap_tasks({t: [first[t]] for t in tasks}, None, n_boot)
    for probe in probes:
        own[probe] = seed_question_bootstrap([first[probe]], None, n_boot)
    half = {k: (ci.high - ci.low) / 2 for k, ci in own.items()}
    return {"rule": DETECTABLE_RULE, "alpha": alpha, "power": power, "mde": mde, "ci_halfwidth": half}


def _quiet(message: str) -> None:
    """The default step reporter: says nothing."""


def run_evaluation(cfg: EvalConfig | None = None, progress: bool = True,
                   on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole comparison; writes ``eval.json`` and ``eval.md`` (and ``eval-timings.json``) to ``cfg.out_dir``.
    ``on_step`` receives a line as each part starts (set-up, each method's dev tuning, each test run).

    1. MAT-Steer's training setting and multiplier, and every other method's hyperparameter, are chosen on dev
       with the first seed (never on test). 2. Every method is scored on test once per seed (methods that do not
       depend on the seed are scored once and their std is 0), beside the constant answer of each task. 3. Every
       method is compared with no steering and with the best baseline by dev (from :data:`BASELINE_POOL`: not
       MAT-Steer's own variants, not the controls) by a bootstrap over test questions and seeds; the smallest
       detectable difference is recorded beside them.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    t_start = time.perf_counter()
    step = on_step or _quiet
    step("comparison: set-up (model, training and dev features, dev and test questions)")
    ex = Experiment(cfg, progress, on_step)
    first = cfg.seeds[0]
    selection = select_training_default(ex)
    overrides = selection["chosen"]["overrides"]
    report: dict[str, Any] = {"config": cfg.to_dict(), "selection": {"training_default": selection}, "methods": {}}

    chosen: dict[str, dict[str, Any]] = {}
    for name in cfg.methods:
        if name == "mat_steer":
            chosen[name], trials = selection["chosen"]["params"], selection["chosen"]["grid"]
        else:
            chosen[name], trials = ex.tune(name, first, overrides)
        report["selection"][name] = {"chosen": chosen[name], "dev_trials": trials}

    for name in cfg.methods:
        seeds = cfg.seeds if name in SEEDED else cfg.seeds[:1]
        runs = []
        for i, seed in enumerate(seeds, 1):
            step(f"comparison: test: {name} ({i}/{len(seeds)})")
            runs.append(ex.test_result(ex.method(name, chosen[name], seed, overrides)))
        report["methods"][name] = {"label": METHOD_LABELS[name], "seeded": name in SEEDED, "seeds": list(seeds),
                                   "role": _role(name), "params": chosen[name], "test": _summarise(runs)}
        if name == "mat_steer":
            report["methods"][name]["health"] = [ex.health(seed, overrides) for seed in seeds]
    report["reference"] = {"constant": {"label": CONSTANT_LABEL, "test": _summarise([ex.test.constant()])},
                           "unsteered_ce": ex.test.unsteered_ce()}

    tasks, probes = ex.test.tasks, ex.test.probes
    report["sizes"] = {"dev": {t: len(ex.dev.questions[t]) for t in ex.dev.all_tasks},
                       "test": {t: len(ex.test.questions[t]) for t in ex.test.all_tasks},
                       "train": {a.name: {"positives": int(a.positives.shape[0]), "negatives": int(a.negatives.shape[0])}
                                 for a in ex.train_data}}
    report["primary"] = {t: PRIMARY[t] for t in (*tasks, *probes)}
    report["tasks"], report["probes"] = list(tasks), list(probes)
    pool = [n for n in cfg.methods if n in BASELINE_POOL]
    dev_best = {n: max(t["dev_mean"] for t in report["selection"][n]["dev_trials"]) for n in pool}
    best = max(dev_best, key=dev_best.get) if dev_best else None  # type: ignore[arg-type]
    report["best_baseline"] = {"name": best, "dev_means": dev_best, "pool": pool}
    intervals: dict[str, Any] = {}
    if "none" in report["methods"]:
        intervals["vs_none"] = comparison_intervals(report["methods"], "none", tasks, probes, cfg.n_boot)
        report["detectable"] = detectable_differences(report["methods"]["none"], tasks, probes, cfg.n_boot)
    if best is not None:
        intervals["vs_best_baseline"] = comparison_intervals(report["methods"], best, tasks, probes, cfg.n_boot)
        report["bootstrap_vs_best_baseline"] = intervals["vs_best_baseline"]["mat_steer"]
    report["intervals"] = intervals
    report["provenance"] = provenance(ex)
    write_report(report, cfg.out_dir)
    write_json(Path(cfg.out_dir) / "eval-timings.json",
               {**ex.timings, "total_s": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()})
    return report


def _role(name: str) -> str:
    """Where a method stands in the comparison: a control, a baseline (in the best-baseline pool) or MAT-Steer /
    one of its variants."""
    if name in CONTROLS:
        return "control"
    return "mat_steer" if name in MAT_VARIANTS else "baseline"


def provenance(ex: Experiment, datasets: Sequence[str] = ()) -> dict[str, Any]:
    """Model hash, data and split hashes, seeds, library versions and git commit (:func:`matsteer.provenance.collect`),
    plus the site, the training features' cache keys and the sha256 of every ``--source`` file."""
    from .provenance import collect

    features = {fs.attribute: {"cache_key": fs.manifest["cache_key"], "texts_sha256": fs.manifest["texts_sha256"]}
                for fs in ex.train_sets}
    tasks = [DATA_OF.get(t, t) for t in ex.test.all_tasks]
    return collect(model_name=ex.loaded.name, model_hash=ex.loaded.weight_hash,
                   datasets=[*ex.cfg.demo.datasets, *tasks, "paradetox", *datasets], seeds=list(ex.cfg.seeds),
                   extra={"site": ex.site.to_dict(), "dtype": str(ex.loaded.dtype).removeprefix("torch."),
                          "features": features,
                          "sources": source_hashes(ex.cfg.sources)}, commit=ex.commit)


def source_hashes(sources: Mapping[str, str | Path]) -> dict[str, dict[str, str]]:
    """``{task: {file: sha256}}`` of user-given source files (every file of a source folder)."""
    from .io import sha256_file

    out: dict[str, dict[str, str]] = {}
    for task, path in sorted(sources.items()):
        p = Path(path)
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        out[task] = {str(f): sha256_file(f) for f in files}
    return out


# ---------------------------------------------------------------------------------------------------------------
# eval.md

#: Task columns of the table: (task, metric, header). The first column of each task is its primary metric.
_COLUMNS = (
    ("truthfulqa", "mc2", "TruthfulQA MC2"),
    ("truthfulqa", "mc1", "TruthfulQA MC1"),
    ("toxigen_pref", "accuracy", "ToxiGen pref. (sum)"),
    ("toxigen_pref", "accuracy_per_token", "ToxiGen pref. (per token)"),
    ("bbq", "balanced", "BBQ ½(ambig + disambig)"),
)
#: The probes' columns: primary first, then the per-class accuracies in brackets.
_PROBE_COLUMNS = {"toxigen": ("balanced_accuracy", "accuracy_toxic", "accuracy_benign",
                              "ToxiGen Yes/No probe: balanced (toxic / benign)")}
MARK = "†"


def _ms(value: Any) -> tuple[float, float] | None:
    """(mean, std) of a summarised metric, or None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return float(value["mean"]), float(value.get("std", 0.0))
    return float(value), 0.0


def _fmt(ms: Any, scale: float = 100.0) -> str:
    v = _ms(ms)
    return "n/a" if v is None else f"{v[0] * scale:.2f} ± {v[1] * scale:.2f}"


def _short(ms: Any, scale: float = 100.0, digits: int = 1) -> str:
    v = _ms(ms)
    return "n/a" if v is None else f"{v[0] * scale:.{digits}f}"


def _at_or_below(value: Any, constant: Any) -> bool:
    a, c = _ms(value), _ms(constant)
    return a is not None and c is not None and a[0] <= c[0] + 1e-12


def _row_cells(t: Mapping[str, Any], const: Mapping[str, Any] | None, tasks: Sequence[str],
               probes: Sequence[str]) -> list[str]:
    """The cells of one table row; primary metrics at or below the constant's are marked."""

    def marked(task: str, metric: str, text: str) -> str:
        is_primary = PRIMARY.get(task) == metric
        if const is not None and is_primary and task in const and _at_or_below(t[task][metric], const[task][metric]):
            return f"{text} {MARK}"
        return text

    cells = []
    for task, metric, _ in _COLUMNS:
        if task not in tasks:
            continue
        cells.append(marked(task, metric, _fmt(t[task].get(metric))))
        if task == "bbq":
            bbq = t["bbq"]
            cells.append(f"{_short(bbq.get('ambig'))} / {_short(bbq.get('disambig'))}")
            cells.append(f"{_short(bbq.get('s_dis'))} / {_short(bbq.get('s_amb'))}")
    mean = _fmt(t["mean"])
    if const is not None and _at_or_below(t["mean"], const["mean"]):
        mean = f"{mean} {MARK}"
    cells.append(mean)
    for probe in probes:
        if probe in _PROBE_COLUMNS:
            main, a, b, _ = _PROBE_COLUMNS[probe]
            cells.append(marked(probe, main, f"{_fmt(t[probe].get(main))} ({_short(t[probe].get(a))} / "
                                             f"{_short(t[probe].get(b))})"))
    side = t.get("side_effects", {})
    cells += [_fmt(side.get("ce"), 1), _fmt(side.get("kl"), 1)]
    return cells


def _ci_cell(ci: Mapping[str, Any]) -> str:
    return f"{ci['mean_diff'] * 100:+.2f} [{ci['low'] * 100:+.2f}, {ci['high'] * 100:+.2f}]"


def in_table_order(entries: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``entries`` in the order of :data:`METHODS` (then any others as given): eval.json is written with sorted
    keys, and a table read back from it keeps the comparison's order."""
    rank = {name: i for i, name in enumerate(METHODS)}
    return sorted(entries.items(), key=lambda kv: rank.get(kv[0], len(rank)))


def _interval_table(rows: Mapping[str, Mapping[str, Any]], report: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    head = " | ".join(_task_header(k) for k in keys)
    lines = [f"| method | {head} |", "|---" * (len(keys) + 1) + "|"]
    for name, row in in_table_order(rows):
        label = report["methods"][name]["label"]
        lines.append(f"| {label} | " + " | ".join(_ci_cell(row[k]) if k in row else "n/a" for k in keys) + " |")
    return lines


def _task_header(key: str) -> str:
    return {"truthfulqa": "TruthfulQA MC2", "toxigen_pref": "ToxiGen pref.", "bbq": "BBQ ½(ambig + disambig)",
            "mean": "mean", "toxigen": "ToxiGen Yes/No (balanced)", "hh_rlhf": "HH-RLHF"}.get(key, key)


def markdown_table(report: dict[str, Any]) -> str:
    """Reference rows and methods x tasks (mean ± std over seeds, %), side effects, intervals against no
    steering and against the best baseline, the smallest detectable difference, and the paper's numbers."""
    methods = report["methods"]
    first = next(iter(methods.values()))["test"]
    tasks = [t for t in TASKS if t in first]
    probes = [p for p in _PROBE_COLUMNS if p in first]
    const_entry = report.get("reference", {}).get("constant")
    const = const_entry["test"] if const_entry else None
    headers = [h for task, _, h in _COLUMNS if task in tasks]
    if "bbq" in tasks:
        i = headers.index("BBQ ½(ambig + disambig)")
        headers[i + 1:i + 1] = ["BBQ ambig / disambig", "BBQ s_DIS / s_AMB (×100)"]
    headers += ["mean", *[_PROBE_COLUMNS[p][3] for p in probes], "neutral CE (nats)", "KL (nats)"]
    lines = ["| method | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    if const_entry is not None:
        lines.append(f"| {const_entry['label']} | " + " | ".join(_row_cells(const, None, tasks, probes)) + " |")
    for _, m in in_table_order(methods):
        lines.append(f"| {m['label']} | " + " | ".join(_row_cells(m["test"], const, tasks, probes)) + " |")
    lines += ["", f"{MARK} at or below the constant / majority answer on that task's primary metric (first column "
              "of each task) or on the mean. Mean: the mean of the attribute tasks' primary metrics; the ToxiGen "
              "Yes/No probe is not in it. CE / KL: n/a for methods that do not edit activations."]
    if const is not None:
        answers = "; ".join(f"{t}: {const[t]['answer']}" for t in (*tasks, *probes) if "answer" in const[t])
        lines.append(f"Constant answers: {answers}.")
    if "unsteered_ce" in report.get("reference", {}):
        lines.append(f"Unsteered cross-entropy on the neutral text: {report['reference']['unsteered_ce']:.3f} nats.")
    lines += size_and_choice_lines(report)
    det = report.get("detectable")
    if det:
        keys = [*tasks, "mean", *probes]
        lines += ["", "Smallest difference the test sizes can detect, in points (two-sided 5% test, 80% power, "
                  "from no steering's per-question variance, methods treated as independent: an upper bound; "
                  "docs/eval-schema.md): "
                  + ", ".join(f"{_task_header(k)} {det['mde'][k] * 100:.1f}" for k in keys)
                  + ". Half-width of no steering's own 95% interval: "
                  + ", ".join(f"{_task_header(k)} ±{det['ci_halfwidth'][k] * 100:.1f}" for k in keys) + "."]
    mat = methods.get("mat_steer", {})
    lines += health_lines(mat.get("health", []), mat.get("seeds", []))
    intervals = report.get("intervals", {})
    keys = [*tasks, "mean", *probes]
    if intervals.get("vs_none"):
        lines += ["", "Method minus no steering, points, 95% bootstrap interval over test questions and seeds:", ""]
        lines += _interval_table(intervals["vs_none"], report, keys)
    best = report.get("best_baseline", {}).get("name")
    if best and intervals.get("vs_best_baseline"):
        pool = ", ".join(report["best_baseline"]["pool"])
        lines += ["", f"Method minus the best baseline by dev score ({methods[best]['label']}; chosen from {pool}: "
                  "not MAT-Steer's own variants, not the controls), points, 95% bootstrap interval over test "
                  "questions and seeds:", ""]
        lines += _interval_table(intervals["vs_best_baseline"], report, keys)
    lines += ["", "Paper, Llama-3.1-8B, Table 1 (for orientation only; another model, other splits, and plain "
              "ToxiGen / BBQ accuracy rather than our preference and balanced metrics):", "",
              "| method | TruthfulQA MC2 | ToxiGen | BBQ |", "|---|---|---|---|"]
    for name, (a, b, c) in PAPER_TABLE1.items():
        lines.append(f"| {METHOD_LABELS[name]} (paper) | {a} | {b} | {c} |")
    a, b, c = PAPER_TABLE4_UNIFORM
    lines.append(f"| {METHOD_LABELS['uniform_gates']} (paper, Table 4) | {a} | {b} | {c} |")
    return "\n".join(lines) + "\n"


#: Plain task names for counts ("TruthfulQA 408"), where the table headers name a metric.
_TASK_NAMES = {"truthfulqa": "TruthfulQA", "toxigen_pref": "ToxiGen pairs", "bbq": "BBQ", "toxigen": "ToxiGen Yes/No",
               "hh_rlhf": "HH-RLHF"}


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "nothing to choose"


def size_and_choice_lines(report: Mapping[str, Any]) -> list[str]:
    """Question counts per split and task, and what dev chose for every method (and MAT-Steer's training)."""
    lines = []
    sizes = report.get("sizes")
    if sizes:
        lines.append("Questions: " + "; ".join(f"{split} " + ", ".join(f"{_TASK_NAMES.get(t, t)} {sizes[split][t]}"
                                                                       for t in _TASK_NAMES if t in sizes[split])
                                               for split in ("dev", "test")) + ".")
    selection = report.get("selection", {})
    chosen = [f"{entry['label']}: {_params_text(selection[m]['chosen'])}"
              for m, entry in in_table_order(report.get("methods", {})) if m in selection]
    if chosen:
        training = selection.get("training_default", {}).get("chosen", {}).get("overrides")
        lines.append("Chosen on dev (seed 0): " + "; ".join(chosen)
                     + (f"; MAT-Steer's training overrides: {training or 'none (the default)'}."
                        if training is not None else "."))
    return lines


def health_lines(healths: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> list[str]:
    """MAT-Steer's training health per seed (dev activations) as a small markdown table, and its verdicts."""
    if not healths:
        return []
    names = healths[0]["attributes"]
    lines = ["", "Training health of MAT-Steer on the dev activations (docs/training.md), per seed: each gate's AUC "
             "on its own attribute, each θ's cosine with its own attribute's mean difference, saturated gate logits:",
             "", "| seed | own-gate AUC | cos(θ, own mean difference) | saturated | verdicts |", "|---|---|---|---|---|"]
    for seed, h in zip(seeds, healths):
        aucs = " / ".join(f"{h['gate_auc'][t][t]:.2f}" for t in range(len(names)))
        coss = " / ".join(f"{h['theta_cos'][t][t]:+.2f}" for t in range(len(names)))
        sat = " / ".join(f"{v:.1%}" for v in h["saturated"])
        verdicts = "; ".join(h["verdicts"]) if h["verdicts"] else "healthy"
        lines.append(f"| {seed} | {aucs} | {coss} | {sat} | {verdicts} |")
    lines.append(f"(attributes in order: {', '.join(names)})")
    return lines


def write_report(report: dict[str, Any], out_dir: Path, name: str = "eval",
                 table: Callable[[dict[str, Any]], str] = markdown_table) -> None:
    """``{name}.json`` and its markdown ``table`` as ``{name}.md``, each written whole or not at all."""
    from .io import atomic_path

    write_json(Path(out_dir) / f"{name}.json", report)
    with atomic_path(Path(out_dir) / f"{name}.md") as tmp:
        tmp.write_text(table(report), encoding="utf-8")
