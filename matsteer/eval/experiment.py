"""One shared set-up for the comparison, its ablations and win rates: the model, the training and dev features,
the dev and test evaluators, memoised training and dev scores, and every method of the comparison built from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from matsteer.activations.features import FeatureSet
from matsteer.activations.models import LoadedModel, load_model
from matsteer.activations.sites import Site
from matsteer.core.attributes import AttributeData
from matsteer.core.baselines import (
    NL_ITI_TOKENS,
    in_context_vector,
    last_token_means,
    mass_mean_shift,
    mean_difference,
    nl_iti,
    paired_demonstrations,
    pairing_keys,
    pca_of_differences,
    probe_gated_mean_difference,
    random_direction_steerer,
    sum_of_single,
    uniform_gates,
)
from matsteer.core.config import TrainConfig
from matsteer.core.finetune import (
    FinetuneConfig,
    FinetuneResult,
    dpo_pairs,
    sft_examples,
    train_lora_dpo,
    train_lora_sft,
)
from matsteer.core.health import training_health
from matsteer.core.reft import ReftConfig, ReftResult, train_loreft
from matsteer.core.steerer import Steerer
from matsteer.core.training import TrainResult, train_steerer
from matsteer.core.workflow import attribute_data, extract_splits
from matsteer.data import load_examples
from matsteer.errors import ConfigError
from matsteer.eval.config import (
    COMBINED,
    FINETUNED,
    FIXED_SEED,
    METHODS,
    REFT,
    SEEDED,
    TEMPERATURE_CONTROLS,
    TRAIN_TOKENS,
    EvalConfig,
    method_grid,
)
from matsteer.eval.evaluator import Evaluator, Method
from matsteer.eval.gate_analysis import training_background
from matsteer.eval.selection import edge_extension, finalists, select_trial
from matsteer.eval.tasks import DATA_OF, PRIMARY, PROBES, TASKS, few_shot_prefix
from matsteer.files import sha256_file
from matsteer.store.provenance import collect, git_commit


def _key(*parts: Any) -> str:
    """A memo key: the parts as canonical JSON."""
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


def data_fingerprint(data: Sequence[AttributeData], digest: Callable[[torch.Tensor], str] = tensor_digest) -> str:
    """One hash of training data (:class:`~matsteer.core.training.AttributeData` records): names, positive sides and the
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


def ignore_step(message: str) -> None:
    """The default step reporter: says nothing."""


class Experiment:
    """Holds the model, features and evaluators so that methods and ablations share one set-up.

    Trained steerers and dev scores are memoised, so a setting asked for twice is trained and scored once.
    """

    def __init__(self, cfg: EvalConfig, progress: bool = True, on_step: Callable[[str], None] | None = None,
                 loaded: LoadedModel | None = None) -> None:
        self.commit = git_commit()  # the code this run starts from (the checkout may change while it runs)
        self.cfg, self.progress = cfg, progress
        self.on_step = on_step or ignore_step
        self.protocol_name: str | None = None
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.loaded = loaded or load_model(cfg.demo.model, dtype=cfg.demo.dtype, progress=progress)
        self.site = Site(cfg.demo.layer, cfg.demo.site)
        self._timed("extract_s", t0)
        self._trained: dict[str, TrainResult] = {}
        self._fixed: dict[str, Steerer] = {}
        self._finetuned: dict[str, FinetuneResult] = {}
        self._reft: dict[str, ReftResult] = {}
        self._digests = TensorDigests()
        self._background: dict[str, torch.Tensor] = {}
        self._layers: dict[int, Experiment] = {}
        self._models: dict[str, Experiment] = {}
        self._token_data: dict[str, list[AttributeData]] = {}
        self._dev_results: dict[str, dict[str, Any]] = {}
        #: The halving search's first-stage trials (on :attr:`dev_subset`), by method, seed and overrides.
        self.subset_trials: dict[str, list[dict[str, Any]]] = {}

    # -- evaluators (built on first use: an experiment on another layer or model may need neither) ----------------
    @functools.cached_property
    def dev(self) -> Evaluator:
        """The dev questions of every task (``cfg.dev_limits``) at this experiment's site."""
        return Evaluator(self.loaded, self.site, "dev", self.cfg.dev_limits, positions=self.cfg.positions,
                         progress=self.progress, sources=self.cfg.sources)

    @functools.cached_property
    def test(self) -> Evaluator:
        """The test questions of every task and probe (``cfg.test_limits``) at this experiment's site."""
        return Evaluator(self.loaded, self.site, "test", self.cfg.test_limits, probes=self.cfg.probes,
                         positions=self.cfg.positions, progress=self.progress, sources=self.cfg.sources)

    @contextlib.contextmanager
    def protocol(self, name: str | None) -> Iterator[None]:
        """Inside the block every steering method steers ``name``'s positions (its dev grid's position dimension is
        that one value); None leaves the configuration as it is."""
        old = self.cfg
        if name is not None:
            self.cfg = dataclasses.replace(old, position_grid=(name,), protocols=())
        self.protocol_name = name
        try:
            with contextlib.ExitStack() as others:  # the other layers' experiments steer the same positions
                for child in list(self._layers.values()):
                    others.enter_context(child.protocol(name))
                yield
        finally:
            self.cfg, self.protocol_name = old, None

    def at_layer(self, layer: int) -> Experiment:
        """This experiment at ``layer`` (``EvalConfig.layers``): the same model (shared, not reloaded), settings and
        questions, with its own training features, steerers, and dev and test question caches at that layer's
        site; itself at its own layer. Memoised."""
        if layer == self.cfg.demo.layer:
            return self
        if layer not in self._layers:
            # From the current settings: a layer first asked for inside a protocol block steers that protocol's
            # positions (a later block sets its own through protocol()).
            demo = dataclasses.replace(self.cfg.demo, layer=layer)
            self._layers[layer] = self._child(dataclasses.replace(self.cfg, demo=demo, layers=()), self.loaded)
        return self._layers[layer]

    def _child(self, cfg: EvalConfig, loaded: LoadedModel) -> Experiment:
        """An experiment with ``cfg`` on ``loaded`` (not reloaded) that reports this one's commit and protocol."""
        child = Experiment(cfg, self.progress, self.on_step, loaded=loaded)
        child.commit, child.protocol_name = self.commit, self.protocol_name
        return child

    def total_timings(self) -> dict[str, float]:
        """:attr:`timings` with those of every other layer's experiment (:meth:`at_layer`) added."""
        out = dict(self.timings)
        for child in (*self._layers.values(), *self._models.values()):
            for key, value in child.timings.items():
                out[key] = out.get(key, 0.0) + value
        return out

    def _timed(self, key: str, t0: float) -> None:
        """Add the seconds since ``t0`` to ``timings[key]``."""
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    # -- features (extracted on first use: the controls that train nothing need none) ----------------------
    @functools.cached_property
    def train_sets(self) -> list[FeatureSet]:
        """The training feature folders of every attribute (extracted, or read from the feature cache)."""
        t0 = time.perf_counter()
        sets = extract_splits(self.loaded, self.cfg.demo, "train", self.cfg.demo.limits, self.progress)
        self._timed("extract_s", t0)
        return sets

    @functools.cached_property
    def train_data(self) -> list[AttributeData]:
        return [attribute_data(fs) for fs in self.train_sets]

    @functools.cached_property
    def dev_data(self) -> list[AttributeData]:
        """Dev activations: the training-health report of every MAT-Steer in the comparison."""
        t0 = time.perf_counter()
        sets = extract_splits(self.loaded, self.cfg.demo, "dev", self.cfg.demo.dev_limits, self.progress)
        self._timed("extract_s", t0)
        return [attribute_data(fs) for fs in sets]

    @functools.cached_property
    def contrasts(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{attribute: (positives [n+, d], negatives [n-, d])}`` of the training features."""
        return {a.name: (a.positives, a.negatives) for a in self.train_data}

    # -- training ---------------------------------------------------------------------------------------------
    def train_config(self, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The demo's training config with ``overrides`` (less ``tokens``, which picks the training features:
        :meth:`data_for`) and ``seed``."""
        train = {k: v for k, v in (overrides or {}).items() if k != TRAIN_TOKENS}
        return TrainConfig(**{**self.cfg.demo.train.to_dict(), **train, "seed": seed})

    def data_for(self, overrides: dict[str, Any] | None) -> list[AttributeData]:
        """The training features a MAT-Steer with ``overrides`` trains on: the experiment's, or where the overrides
        name other ``tokens`` ("all": every token of x‖y, the paper's §2.2; "answer": the answer tokens), the same
        texts extracted at those tokens (memoised)."""
        tokens = (overrides or {}).get(TRAIN_TOKENS, self.cfg.demo.tokens)
        if tokens == self.cfg.demo.tokens:
            return self.train_data
        if tokens not in self._token_data:
            t0 = time.perf_counter()
            demo = dataclasses.replace(self.cfg.demo, tokens=tokens)
            sets = extract_splits(self.loaded, demo, "train", demo.limits, self.progress)
            self._token_data[tokens] = [attribute_data(fs) for fs in sets]
            self._timed("extract_s", t0)
        return self._token_data[tokens]

    def steerer(self, seed: int, overrides: dict[str, Any] | None = None, data: Sequence[AttributeData] | None = None,
                site: Site | None = None) -> Steerer:
        """MAT-Steer trained on ``data`` (default: every attribute's training features), memoised by seed,
        overrides, site (default: the experiment's) and a fingerprint of the data itself, so that features of
        another layer or subsample train their own steerer even with the same row counts."""
        return self.trained(seed, overrides, data, site).steerer

    def trained(self, seed: int, overrides: dict[str, Any] | None = None,
                data: Sequence[AttributeData] | None = None,
                site: Site | None = None) -> TrainResult:
        """The memoised training result behind :meth:`steerer` (σ used and θ's initialisation included)."""
        data = list(data or self.data_for(overrides))
        key = steerer_key(seed, overrides, site or self.site, data_fingerprint(data, self._digests))
        if key not in self._trained:
            cfg = self.train_config(seed, overrides)
            needs = cfg.lambda_background > 0 or cfg.calibrate_fpr is not None
            background = self.background(site or self.site) if needs else None
            t0 = time.perf_counter()
            self._trained[key] = train_steerer(data, cfg, progress=False, background=background)
            self._timed("train_s", t0)
        return self._trained[key]

    def background(self, site: Site | None = None) -> torch.Tensor:
        """Background rows ``[N, d]`` at ``site`` (default: the experiment's) for the training presets whose gates
        must stay shut on them (``targeted``, ``targeted-calibrated``;
        :func:`~matsteer.eval.gate_analysis.training_background` of the comparison's data sets), memoised per site."""
        site = site or self.site
        key = json.dumps(site.to_dict(), sort_keys=True)
        if key not in self._background:
            t0 = time.perf_counter()
            self._background[key] = training_background(self.loaded, site, self.cfg.demo.datasets, seed=FIXED_SEED)
            self._timed("extract_s", t0)
        return self._background[key]

    def health(self, seed: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Training health (:mod:`matsteer.core.health`) of the joint MAT-Steer of ``seed`` on the dev activations."""
        result = self.trained(seed, overrides)
        return training_health(result.steerer, self.dev_data, sigma=result.sigma_used,
                               theta_init=result.theta_init, seed=seed).to_dict()

    def same_steps(self, overrides: dict[str, Any] | None, data: Sequence[AttributeData]) -> dict[str, Any]:
        """``overrides`` with the epochs that give training on ``data`` the optimizer steps of the joint training.

        An epoch has ``ceil(smallest side / batch_per_side)`` steps, so one large attribute alone would otherwise
        train ten times longer than it does inside the joint steerer (and cost ten times the time).
        """
        cfg = self.train_config(0, overrides)

        def steps(ds: Sequence[AttributeData]) -> int:
            return math.ceil(min(min(a.positives.shape[0], a.negatives.shape[0]) for a in ds) / cfg.batch_per_side)

        joint = self.data_for(overrides)
        return {**(overrides or {}), "epochs": max(1, round(cfg.epochs * steps(joint) / steps(data)))}

    def finetuned(self, name: str, params: Mapping[str, Any], seed: int) -> FinetuneResult:
        """The LoRA baseline ``name`` (:data:`~matsteer.eval.config.FINETUNED`) trained with ``params`` over
        ``cfg.finetune`` and ``seed`` on the training splits of the comparison's data sets (as many questions per
        data set as the steering methods' features come from), memoised."""
        method = FINETUNED[name]
        key = _key(name, dict(params), dict(self.cfg.finetune), seed)
        if key not in self._finetuned:
            t0 = time.perf_counter()
            cfg = FinetuneConfig(**{**self.cfg.finetune, **params, "method": method, "seed": seed})
            # ToxiGen's examples are benign/toxic pairs: half as many as the statements the features come from.
            limits = {ds: n if ds != "toxigen" or n is None else max(1, n // 2)
                      for ds, n in ((ds, self.cfg.demo.limits.get(ds)) for ds in self.cfg.demo.datasets)}
            if method == "sft":
                examples = [e for ds, n in limits.items() for e in sft_examples([ds], split="train", limit=n)]
                self._finetuned[key] = train_lora_sft(self.loaded, examples, cfg, progress=self.progress)
            else:
                pairs = [p for ds, n in limits.items() for p in dpo_pairs([ds], split="train", limit=n)]
                self._finetuned[key] = train_lora_dpo(self.loaded, pairs, cfg, progress=self.progress)
            self._timed("finetune_s", t0)
        return self._finetuned[key]

    def reft(self, params: Mapping[str, Any], seed: int) -> ReftResult:
        """LoReFT (:mod:`matsteer.core.reft`) trained at the comparison's site with ``params``
        (:class:`~matsteer.core.reft.ReftConfig` fields; the scoring settings ``positions`` and ``preserve_norm``
        left out) and ``seed``, on the LoRA SFT row's examples (:func:`~matsteer.core.finetune.sft_examples` of the
        training splits, as many per data set as :meth:`finetuned` takes), memoised."""
        train = {k: v for k, v in params.items() if k not in ("positions", "preserve_norm")}
        key = _key("loreft", train, seed, self.site.to_dict())
        if key not in self._reft:
            t0 = time.perf_counter()
            cfg = ReftConfig.from_dict({**train, "seed": seed})
            # As finetuned(): ToxiGen's examples are benign/toxic pairs, half as many as its feature statements.
            limits = {ds: n if ds != "toxigen" or n is None else max(1, n // 2)
                      for ds, n in ((ds, self.cfg.demo.limits.get(ds)) for ds in self.cfg.demo.datasets)}
            examples = [e for ds, n in limits.items() for e in sft_examples([ds], split="train", limit=n)]
            self._reft[key] = train_loreft(self.loaded, examples, self.site, cfg, progress=self.progress)
            self._timed("reft_s", t0)
        return self._reft[key]

    def _probe_caa(self) -> Steerer:
        """CAA vectors behind logistic-probe gates at multiplier 1, fitted once (the multiplier scales θ only, so
        it is applied as the global multiplier: the same edit without refitting the probes)."""
        if "probe_caa" not in self._fixed:
            self._fixed["probe_caa"] = probe_gated_mean_difference(self.contrasts, 1.0, seed=FIXED_SEED)
        return self._fixed["probe_caa"]

    def _icv(self) -> Steerer:
        """ICV at λ = 1 from paired training demonstrations, built once (λ scales θ only: applied as the global
        multiplier). The examples are those the training features were extracted from, so each feature set's
        text_index points into them."""
        if "icv" not in self._fixed:
            demos = {}
            for ds, fs in zip(self.cfg.demo.datasets, self.train_sets):
                examples = load_examples(ds, "train", limit=self.cfg.demo.limits.get(ds))
                demos[fs.attribute] = paired_demonstrations(fs, pairing_keys(examples), seed=FIXED_SEED)
            self._fixed["icv"] = in_context_vector(demos, 1.0)
        return self._fixed["icv"]

    def _nl_iti(self) -> Steerer:
        """NL-ITI at α = 1, fitted once (its MLP probes seeded with FIXED_SEED, like the logistic probes of
        probe-gated CAA): directions from the mean of each training text's last NL_ITI_TOKENS tokens, gates fitted
        on every training row."""
        if "nl_iti" not in self._fixed:
            directions = {fs.attribute: last_token_means(fs, NL_ITI_TOKENS) for fs in self.train_sets}
            self._fixed["nl_iti"] = nl_iti(directions, 1.0, gate_data=self.contrasts, seed=FIXED_SEED)
        return self._fixed["nl_iti"]

    # -- methods ----------------------------------------------------------------------------------------------
    def method(self, name: str, params: dict[str, Any], seed: int, overrides: dict[str, Any] | None = None) -> Method:
        """One method at ``params`` (its multiplier / α / shots) for ``seed``; MAT-Steer-based methods train with
        ``overrides`` of the training config."""
        if name == "none":
            return Method(name)
        if name in TEMPERATURE_CONTROLS:
            return Method(name, temperature=params["temperature"], length_normalise=name == "temperature_len",
                          params=params)
        if name in FINETUNED:
            return Method(name, model=self.finetuned(name, params, seed).adapted, params=params)
        if name in COMBINED:
            return self._combined(name, params, seed, overrides)
        if name == "icl":
            tasks = dict.fromkeys((*TASKS, *PROBES, *self.test.all_tasks))
            return Method(name, prefix={t: few_shot_prefix(t, params["shots"], FIXED_SEED) for t in tasks},
                          params=params)
        if name in REFT:  # its edit of the site activations, scored as the closed-form baselines' (no renorm)
            return Method(name, self.reft(params, seed).steerer, steer_special=self.cfg.steer_special,
                          positions=params.get("positions"), preserve_norm=params.get("preserve_norm", False),
                          params=params)
        c, m = self.contrasts, params.get("multiplier", 1.0)  # the training features, extracted on first use
        # Closed-form vectors are added as they are, MAT-Steer's family rescaled to ‖a‖, unless the grid says.
        closed = {"steer_special": self.cfg.steer_special, "positions": params.get("positions"),
                  "preserve_norm": params.get("preserve_norm", False), "params": params}
        renormed = {**closed, "preserve_norm": params.get("preserve_norm", True)}
        if name == "iti":
            return Method(name, mass_mean_shift(c, params["alpha"]), **closed)
        if name == "caa":
            return Method(name, mean_difference(c, m), **closed)
        if name == "pca":
            return Method(name, pca_of_differences(c, m, seed=FIXED_SEED), **closed)
        if name == "probe_caa":
            return Method(name, self._probe_caa(), global_multiplier=m, **closed)
        if name == "icv":  # m carries ICV's λ
            return Method(name, self._icv(), global_multiplier=m, **renormed)
        if name == "nl_iti":
            return Method(name, self._nl_iti(), global_multiplier=params["alpha"], **closed)
        if name == "random":
            # As hard a push as MAT-Steer's at this seed (its ‖θ_t‖), in random directions, gates always on.
            mat = self.steerer(seed, overrides)
            norms = mat.theta.detach().norm(dim=1)
            return Method(name, random_direction_steerer(mat.attributes, mat.d, norms, seed=seed),
                          global_multiplier=m, **renormed)
        if name == "mat_steer":
            return Method(name, self.steerer(seed, overrides), global_multiplier=m, **renormed)
        if name == "uniform_gates":
            return Method(name, uniform_gates(self.steerer(seed, overrides)), global_multiplier=m, **renormed)
        if name == "sum_single":
            singles = [self.steerer(seed, self.same_steps(overrides, [a]), [a]) for a in self.data_for(overrides)]
            return Method(name, sum_of_single(singles), global_multiplier=m, **renormed)
        raise ConfigError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.")

    def _combined(self, name: str, params: dict[str, Any], seed: int, overrides: dict[str, Any] | None) -> Method:
        """Table 9's rows (:data:`~matsteer.eval.config.COMBINED`): MAT-Steer at ``params``' multiplier (and
        positions / norm) on top of the row it builds on at ``params``' own settings. ICL + MAT-Steer: the
        comparison's MAT-Steer steers the demonstration-prefixed prompts. SFT / DPO + MAT-Steer: the adapter of
        that LoRA row (memoised with it), MAT-Steer trained on the adapted model's activations
        (:meth:`on_model`) and steering it; its side effects are the adapted and steered model's against the base."""
        base_name = COMBINED[name]
        own = {k: v for k, v in params.items() if k not in ("multiplier", "positions", "preserve_norm")}
        steer_params = {k: v for k, v in params.items() if k not in own}
        base = self.method(base_name, own, seed, overrides)
        if base.model is None:
            mat = self.method("mat_steer", steer_params, seed, overrides)
            return dataclasses.replace(mat, name=name, prefix=base.prefix, params=params)
        mat = self.on_model(base.model).method("mat_steer", steer_params, seed, overrides)
        return dataclasses.replace(mat, name=name, model=base.model, params=params)

    def on_model(self, loaded: LoadedModel) -> Experiment:
        """This experiment on another model (a fine-tuned copy, told apart by its weight hash): the same settings,
        with training features extracted from that model and MAT-Steer trained on them. Memoised."""
        if loaded is self.loaded:
            return self
        if loaded.weight_hash not in self._models:
            # Its own feature folders: named by the weights, so that no adapter's features replace another's.
            demo = dataclasses.replace(self.cfg.demo, model=f"{loaded.name}-{loaded.weight_hash[:12]}")
            self._models[loaded.weight_hash] = self._child(dataclasses.replace(self.cfg, demo=demo), loaded)
        return self._models[loaded.weight_hash]

    def grid(self, name: str) -> list[dict[str, Any]]:
        """The dev grid of a method (:func:`~matsteer.eval.config.method_grid` of this experiment's settings)."""
        return method_grid(self.cfg, name)

    @functools.cached_property
    def dev_subset(self) -> Evaluator:
        """The first stage of the halving search (``cfg.search``): ``cfg.halving_fraction`` of each dev task's
        questions (at least one; BBQ's stratified as the loaders stratify every subset), the same neutral text."""
        limits = {t: max(1, math.ceil(len(qs) * self.cfg.halving_fraction)) for t, qs in self.dev.questions.items()}
        return Evaluator(self.loaded, self.site, "dev", limits, positions=self.cfg.positions, progress=self.progress,
                         sources=self.cfg.sources)

    def dev_result(self, name: str, params: dict[str, Any], seed: int,
                   overrides: dict[str, Any] | None = None, subset: bool = False) -> dict[str, Any]:
        """The dev scores of a method at ``params`` (``subset``: on :attr:`dev_subset`), memoised (seed and
        overrides count only for seeded methods)."""
        key = _key(name, params, seed if name in SEEDED else None, overrides if name in SEEDED else None, subset)
        if key not in self._dev_results:
            t0 = time.perf_counter()
            evaluator = self.dev_subset if subset else self.dev
            self._dev_results[key] = evaluator.evaluate(self.method(name, params, seed, overrides))
            self._timed("dev_eval_s", t0)
        return self._dev_results[key]

    def tune(self, name: str, seed: int, overrides: dict[str, Any] | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The setting with the best dev mean among those within ``cfg.kl_budget`` (ties: the first;
        :func:`~matsteer.eval.selection.select_trial`), and every trial (dev mean and KL; the KL is None for
        methods that change no next-token distribution of neutral text). While the choice sits at an edge of its
        strength's grid, the grid grows past it by ``cfg.grid_factor``, at most ``cfg.grid_extensions`` times."""
        extra = f" with training setting {overrides}" if name == "mat_steer" and overrides else ""
        self.on_step(f"comparison: dev: tuning {name}{extra}")
        halving = self.cfg.search == "halving"
        trials = self.grid_trials(name, seed, overrides, subset=halving)
        if halving:
            # Successive halving: the whole grid on the dev subset, the finalists again on the whole dev set.
            self.subset_trials[_key(name, seed, overrides)] = trials
            trials = [self._trial(name, trials[i]["params"], seed, overrides)
                      for i in finalists(trials, self.cfg.halving_keep, self.cfg.kl_budget)]
        return trials[select_trial(trials, self.cfg.kl_budget)]["params"], trials

    def first_stage(self, name: str, seed: int, overrides: dict[str, Any] | None = None
                    ) -> list[dict[str, Any]] | None:
        """The trials :meth:`tune` scored on :attr:`dev_subset` before re-scoring its finalists (None: not searched
        by halving)."""
        return self.subset_trials.get(_key(name, seed, overrides))

    def grid_trials(self, name: str, seed: int, overrides: dict[str, Any] | None, subset: bool = False,
                    extend: bool = True, grid: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Every setting of the method's grid (or of ``grid``) as a dev trial (``subset``: on :attr:`dev_subset`),
        the grid grown past an edge while the choice sits there (``extend``: ``cfg.grid_extensions`` times at
        most, by ``cfg.grid_factor``)."""
        trials = [self._trial(name, params, seed, overrides, subset) for params in (grid or self.grid(name))]
        for _ in range(self.cfg.grid_extensions if extend else 0):
            nxt = edge_extension(trials, select_trial(trials, self.cfg.kl_budget), self.cfg.grid_factor)
            if nxt is None or any(t["params"] == nxt for t in trials):
                break
            trials.append(self._trial(name, nxt, seed, overrides, subset))
        return trials

    def _trial(self, name: str, params: dict[str, Any], seed: int, overrides: dict[str, Any] | None,
               subset: bool = False) -> dict[str, Any]:
        """One dev trial: the setting, its dev mean, neutral-text KL and each task's primary score."""
        res = self.dev_result(name, params, seed, overrides, subset)
        return {"params": params, "dev_mean": res["mean"], "dev_kl": res["side_effects"]["kl"],
                **{t: res[t][PRIMARY[t]] for t in self.dev.tasks}}

    def test_result(self, method: Method) -> dict[str, Any]:
        """The test scores of ``method`` (timed)."""
        t0 = time.perf_counter()
        out = self.test.evaluate(method)
        self._timed("test_eval_s", t0)
        return out


def provenance(ex: Experiment, datasets: Sequence[str] = ()) -> dict[str, Any]:
    """Model hash, data and split hashes, seeds, library versions and git commit (:func:`matsteer.store.provenance.collect`),
    plus the site, the training features' cache keys and the sha256 of every ``--source`` file."""
    # Only features this run extracted: a run of controls that train nothing extracts none.
    sets = ex.__dict__.get("train_sets", [])
    features = {fs.attribute: {"cache_key": fs.manifest["cache_key"], "texts_sha256": fs.manifest["texts_sha256"]}
                for fs in sets}
    tasks = [DATA_OF.get(t, t) for t in ex.test.all_tasks]
    return collect(model_name=ex.loaded.name, model_hash=ex.loaded.weight_hash,
                   datasets=[*ex.cfg.demo.datasets, *tasks, "paradetox", *datasets], seeds=list(ex.cfg.seeds),
                   extra={"site": ex.site.to_dict(), "dtype": str(ex.loaded.dtype).removeprefix("torch."),
                          "features": features,
                          "sources": source_hashes(ex.cfg.sources)}, commit=ex.commit)


def source_hashes(sources: Mapping[str, str | Path]) -> dict[str, dict[str, str]]:
    """``{task: {file: sha256}}`` of user-given source files (every file of a source folder)."""
    out: dict[str, dict[str, str]] = {}
    for task, path in sorted(sources.items()):
        p = Path(path)
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        out[task] = {str(f): sha256_file(f) for f in files}
    return out
