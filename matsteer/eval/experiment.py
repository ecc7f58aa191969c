"""One shared set-up for the comparison, its ablations and win rates: the model, the training and dev features,
the dev and test evaluators, memoised training and dev scores, and every method of the comparison built from them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from matsteer.activations.models import load_model
from matsteer.activations.sites import Site
from matsteer.core.attributes import AttributeData
from matsteer.core.baselines import (
    mass_mean_shift,
    mean_difference,
    pca_of_differences,
    probe_gated_mean_difference,
    random_direction_steerer,
    sum_of_single,
    uniform_gates,
)
from matsteer.core.config import TrainConfig
from matsteer.core.health import training_health
from matsteer.core.steerer import Steerer
from matsteer.core.training import TrainResult, train_steerer
from matsteer.core.workflow import attribute_data, extract_splits
from matsteer.errors import ConfigError
from matsteer.eval.config import FIXED_SEED, METHODS, SEEDED, EvalConfig
from matsteer.eval.evaluator import Evaluator, Method
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

    def __init__(self, cfg: EvalConfig, progress: bool = True, on_step: Callable[[str], None] | None = None) -> None:
        self.commit = git_commit()  # the code this run starts from (the checkout may change while it runs)
        self.cfg, self.progress = cfg, progress
        self.on_step = on_step or ignore_step
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
        """Add the seconds since ``t0`` to ``timings[key]``."""
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    # -- training ---------------------------------------------------------------------------------------------
    def train_config(self, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The demo's training config with ``overrides`` and ``seed``."""
        return TrainConfig(**{**self.cfg.demo.train.to_dict(), **(overrides or {}), "seed": seed})

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
        data = list(data or self.train_data)
        key = steerer_key(seed, overrides, site or self.site, data_fingerprint(data, self._digests))
        if key not in self._trained:
            t0 = time.perf_counter()
            self._trained[key] = train_steerer(data, self.train_config(seed, overrides), progress=False)
            self._timed("train_s", t0)
        return self._trained[key]

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
        special: dict[str, Any] = {"steer_special": self.cfg.steer_special, "positions": params.get("positions")}
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
        """The dev scores of a method at ``params``, memoised (seed and overrides count only for seeded methods)."""
        key = _key(name, params, seed if name in SEEDED else None, overrides if name in SEEDED else None)
        if key not in self._dev_results:
            t0 = time.perf_counter()
            self._dev_results[key] = self.dev.evaluate(self.method(name, params, seed, overrides))
            self._timed("dev_eval_s", t0)
        return self._dev_results[key]

    def tune(self, name: str, seed: int, overrides: dict[str, Any] | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
        """The test scores of ``method`` (timed)."""
        t0 = time.perf_counter()
        out = self.test.evaluate(method)
        self._timed("test_eval_s", t0)
        return out


def provenance(ex: Experiment, datasets: Sequence[str] = ()) -> dict[str, Any]:
    """Model hash, data and split hashes, seeds, library versions and git commit (:func:`matsteer.store.provenance.collect`),
    plus the site, the training features' cache keys and the sha256 of every ``--source`` file."""
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
    out: dict[str, dict[str, str]] = {}
    for task, path in sorted(sources.items()):
        p = Path(path)
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        out[task] = {str(f): sha256_file(f) for f in files}
    return out
