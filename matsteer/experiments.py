"""The paper's comparison on the default model: every method trained on the same features, tuned on dev only,
scored on the held-out test questions over several seeds, with side effects and a paired bootstrap.

``run_evaluation(EvalConfig())`` writes ``results/eval.json`` and ``results/eval.md``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .baselines import mass_mean_shift, mean_difference, pca_of_differences, sum_of_single, uniform_gates
from .errors import ConfigError
from .evaluate import PRIMARY, TASKS, Evaluator, Method, few_shot_prefix
from .io import write_json
from .pipeline import DemoConfig, attribute_data, extract_splits
from .sites import Site
from .stats import mean_std, paired_bootstrap_ci
from .steerer import Steerer
from .train import TrainConfig, train

#: Llama-3.1-8B, layer 14, the paper's Table 1 (TruthfulQA MC2 / ToxiGen / BBQ accuracy, %). For orientation only.
PAPER_TABLE1 = {
    "none": (49.91, 48.10, 51.77), "icl": (55.32, 51.26, 56.46), "iti": (52.68, 52.55, 53.45),
    "mat_steer": (61.94, 57.59, 60.32),
}
#: The paper's Table 4 "All tokens (uniform)" row (its caption says Llama-3.1-8B; its base row is Qwen2.5-7B's).
PAPER_TABLE4_UNIFORM = (58.09, 55.92, 59.74)

METHOD_LABELS = {
    "none": "No steering", "icl": "Few-shot prompting (ICL)", "iti": "ITI mass-mean shift", "caa": "CAA mean difference",
    "pca": "PCA of paired differences", "sum_single": "Sum of single-attribute MAT-Steer",
    "uniform_gates": "MAT-Steer vectors, uniform gates", "mat_steer": "MAT-Steer",
}


#: Methods in the comparison, in table order. Those in SEEDED are trained, once per seed; the others are closed
#: form or fixed (ICL's demonstrations and PCA's pairing use seed 0), so they are scored once and their std is 0.
METHODS = ("none", "icl", "iti", "caa", "pca", "sum_single", "uniform_gates", "mat_steer")
SEEDED = frozenset({"sum_single", "uniform_gates", "mat_steer"})
FIXED_SEED = 0


@dataclass
class EvalConfig:
    """What the default evaluation runs (with extraction, under 20 minutes on 2 CPU cores; README *Evaluation*);
    :meth:`full` uses the whole training and test splits.

    Every hyperparameter is chosen on the dev questions with the first seed, then kept for the other seeds:
    MAT-Steer's training setting (``training_candidates``, overrides of ``demo.train``) with its multiplier, each
    baseline's multiplier / α / number of shots.
    """

    demo: DemoConfig = field(default_factory=DemoConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    dev_limits: dict[str, int | None] = field(default_factory=lambda: {"truthfulqa": 30, "toxigen": 45, "bbq": 45})
    test_limits: dict[str, int | None] = field(default_factory=lambda: {"truthfulqa": 80, "toxigen": 160, "bbq": 100})
    multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    iti_alphas: tuple[float, ...] = (1.0, 2.0, 4.0)
    icl_shots: tuple[int, ...] = (1, 3)
    training_candidates: tuple[dict[str, Any], ...] = (
        {"lambda_pos": 0.9, "lambda_sparse": 0.9}, {"lambda_pos": 0.1, "lambda_sparse": 0.1})
    methods: tuple[str, ...] = METHODS
    positions: str = "prompt"
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

    def validate(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
        if "mat_steer" not in self.methods:
            raise ConfigError("The comparison needs 'mat_steer' among the methods.")
        if not self.seeds or not self.training_candidates or not self.multipliers:
            raise ConfigError("seeds, training_candidates and multipliers must each hold at least one value.")
        for cand in self.training_candidates:
            TrainConfig(**{**self.demo.train.to_dict(), **cand}).validate()


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


class Experiment:
    """Holds the model, features and evaluators so that methods and ablations share one set-up.

    Trained steerers and dev scores are memoised, so a setting asked for twice is trained and scored once.
    """

    def __init__(self, cfg: EvalConfig, progress: bool = True) -> None:
        from .models import load_model

        self.cfg, self.progress = cfg, progress
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.loaded = load_model(cfg.demo.model, progress=progress)
        self.site = Site(cfg.demo.layer, cfg.demo.site)
        self.train_sets = extract_splits(self.loaded, cfg.demo, "train", cfg.demo.limits, progress)
        self.timings["extract_s"] = time.perf_counter() - t0
        self.train_data = [attribute_data(fs) for fs in self.train_sets]
        self.contrasts = {a.name: (a.positives, a.negatives) for a in self.train_data}
        self.dev = Evaluator(self.loaded, self.site, "dev", cfg.dev_limits, positions=cfg.positions, progress=progress)
        self.test = Evaluator(self.loaded, self.site, "test", cfg.test_limits, positions=cfg.positions,
                              progress=progress)
        self._steerers: dict[str, Steerer] = {}
        self._dev_results: dict[str, dict[str, Any]] = {}

    def _timed(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    # -- training ---------------------------------------------------------------------------------------------
    def train_config(self, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
        return TrainConfig(**{**self.cfg.demo.train.to_dict(), **(overrides or {}), "seed": seed})

    def steerer(self, seed: int, overrides: dict[str, Any] | None = None, data: Sequence[Any] | None = None) -> Steerer:
        """MAT-Steer trained on ``data`` (default: every attribute's training features), memoised."""
        data = list(data or self.train_data)
        key = _key(seed, overrides, [(a.name, a.positives.shape[0], a.negatives.shape[0]) for a in data])
        if key not in self._steerers:
            t0 = time.perf_counter()
            self._steerers[key] = train(data, self.train_config(seed, overrides), progress=False).steerer
            self._timed("train_s", t0)
        return self._steerers[key]

    def same_steps(self, overrides: dict[str, Any] | None, data: Sequence[Any]) -> dict[str, Any]:
        """``overrides`` with the epochs that give training on ``data`` the optimizer steps of the joint training.

        An epoch has ``ceil(smallest side / batch_per_side)`` steps, so one large attribute alone would otherwise
        train ten times longer than it does inside the joint steerer (and cost ten times the time).
        """
        cfg = self.train_config(0, overrides)

        def steps(ds: Sequence[Any]) -> int:
            return math.ceil(min(min(a.positives.shape[0], a.negatives.shape[0]) for a in ds) / cfg.batch_per_side)

        return {**(overrides or {}), "epochs": max(1, round(cfg.epochs * steps(self.train_data) / steps(data)))}

    # -- methods ----------------------------------------------------------------------------------------------
    def method(self, name: str, params: dict[str, Any], seed: int, overrides: dict[str, Any] | None = None) -> Method:
        """One method at ``params`` (its multiplier / α / shots) for ``seed``; MAT-Steer-based methods train with
        ``overrides`` of the training config."""
        c, m = self.contrasts, params.get("multiplier", 1.0)
        if name == "none":
            return Method(name)
        if name == "icl":
            return Method(name, prefix={t: few_shot_prefix(t, params["shots"], FIXED_SEED) for t in TASKS},
                          params=params)
        if name == "iti":
            return Method(name, mass_mean_shift(c, params["alpha"]), preserve_norm=False, params=params)
        if name == "caa":
            return Method(name, mean_difference(c, m), preserve_norm=False, params=params)
        if name == "pca":
            return Method(name, pca_of_differences(c, m, seed=FIXED_SEED), preserve_norm=False, params=params)
        if name == "mat_steer":
            return Method(name, self.steerer(seed, overrides), global_multiplier=m, params=params)
        if name == "uniform_gates":
            return Method(name, uniform_gates(self.steerer(seed, overrides)), global_multiplier=m, params=params)
        if name == "sum_single":
            singles = [self.steerer(seed, self.same_steps(overrides, [a]), [a]) for a in self.train_data]
            return Method(name, sum_of_single(singles), global_multiplier=m, params=params)
        raise ConfigError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.")

    def grid(self, name: str) -> list[dict[str, Any]]:
        """The dev grid of a method's run-time hyperparameter."""
        if name == "none":
            return [{}]
        if name == "icl":
            return [{"shots": k} for k in self.cfg.icl_shots]
        if name == "iti":
            return [{"alpha": a} for a in self.cfg.iti_alphas]
        return [{"multiplier": m} for m in self.cfg.multipliers]

    def dev_result(self, name: str, params: dict[str, Any], seed: int,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        key = _key(name, params, seed if name in SEEDED else None, overrides if name in SEEDED else None)
        if key not in self._dev_results:
            t0 = time.perf_counter()
            self._dev_results[key] = self.dev.evaluate(self.method(name, params, seed, overrides))
            self._timed("dev_eval_s", t0)
        return self._dev_results[key]

    def tune(self, name: str, seed: int, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], list]:
        """The grid value with the best dev mean (ties: the first), and every trial (dev mean and KL)."""
        trials = []
        for params in self.grid(name):
            res = self.dev_result(name, params, seed, overrides)
            trials.append({"params": params, "dev_mean": res["mean"], "dev_kl": res["side_effects"]["kl"],
                           **{t: res[t][PRIMARY[t]] for t in TASKS}})
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


def _summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every metric, and per-question primary scores averaged over seeds."""
    out: dict[str, Any] = {}
    for task in TASKS:
        metrics = [k for k in per_seed[0][task] if k not in ("per_item", "n")]
        out[task] = {k: asdict(mean_std([r[task][k] for r in per_seed])) for k in metrics}
        out[task]["n"] = per_seed[0][task]["n"]
        items = torch.tensor([r[task]["per_item"] for r in per_seed], dtype=torch.float64)
        out[task]["per_item"] = items.mean(0).tolist()
    out["mean"] = asdict(mean_std([r["mean"] for r in per_seed]))
    out["side_effects"] = {k: asdict(mean_std([r["side_effects"][k] for r in per_seed]))
                           for k in per_seed[0]["side_effects"]}
    return out


def run_evaluation(cfg: EvalConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """The whole comparison; writes ``eval.json`` and ``eval.md`` (and ``eval-timings.json``) to ``cfg.out_dir``.

    1. MAT-Steer's training setting and multiplier, and every baseline's hyperparameter, are chosen on dev with
       the first seed (never on test). 2. Every method is scored on test once per seed (methods that do not depend
       on the seed are scored once and their std is 0). 3. MAT-Steer is compared with the baseline that scored best
       on dev, by a paired bootstrap over test questions.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    t_start = time.perf_counter()
    ex = Experiment(cfg, progress)
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
        runs = [ex.test_result(ex.method(name, chosen[name], seed, overrides))
                for seed in (cfg.seeds if name in SEEDED else cfg.seeds[:1])]
        report["methods"][name] = {"label": METHOD_LABELS[name], "seeded": name in SEEDED,
                                   "params": chosen[name], "test": _summarise(runs)}

    # MAT-Steer minus the best baseline, the baseline picked by its dev score (not test).
    dev_best = {n: max(t["dev_mean"] for t in report["selection"][n]["dev_trials"])
                for n in cfg.methods if n not in ("mat_steer", "none")}
    if dev_best:
        best_baseline = max(dev_best, key=dev_best.get)
        report["best_baseline"] = {"name": best_baseline, "dev_means": dev_best}
        mat_t, base_t = report["methods"]["mat_steer"]["test"], report["methods"][best_baseline]["test"]
        report["bootstrap_vs_best_baseline"] = {
            task: asdict(paired_bootstrap_ci(mat_t[task]["per_item"], base_t[task]["per_item"], n_boot=cfg.n_boot,
                                             seed=0)) for task in TASKS}
    report["provenance"] = provenance(ex)
    write_report(report, cfg.out_dir)
    write_json(Path(cfg.out_dir) / "eval-timings.json",
               {**ex.timings, "total_s": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()})
    return report


def provenance(ex: Experiment, datasets: Sequence[str] = ()) -> dict[str, Any]:
    """Model hash, data and split hashes, seeds, library versions and git commit (:func:`matsteer.provenance.collect`),
    plus the site and the training features' cache keys."""
    from .provenance import collect

    features = {fs.attribute: {"cache_key": fs.manifest["cache_key"], "texts_sha256": fs.manifest["texts_sha256"]}
                for fs in ex.train_sets}
    return collect(model_name=ex.loaded.name, model_hash=ex.loaded.weight_hash,
                   datasets=[*ex.cfg.demo.datasets, *ex.test.tasks, "paradetox", *datasets], seeds=list(ex.cfg.seeds),
                   extra={"site": ex.site.to_dict(), "features": features})


def _fmt(ms: dict[str, float], scale: float = 100.0) -> str:
    return f"{ms['mean'] * scale:.2f} ± {ms['std'] * scale:.2f}"


def markdown_table(report: dict[str, Any]) -> str:
    """Methods x tasks (mean ± std over seeds, %), side effects, and the paper's numbers for orientation."""
    lines = ["| method | TruthfulQA MC2 | TruthfulQA MC1 | ToxiGen acc | BBQ acc (ambig / disambig) | mean | neutral CE (nats) | KL (nats) |",
             "|---|---|---|---|---|---|---|---|"]
    for m in report["methods"].values():
        t = m["test"]
        bbq = t["bbq"]
        lines.append(
            f"| {m['label']} | {_fmt(t['truthfulqa']['mc2'])} | {_fmt(t['truthfulqa']['mc1'])} | "
            f"{_fmt(t['toxigen']['accuracy'])} | {_fmt(bbq['accuracy'])} ({bbq['ambig']['mean'] * 100:.1f} / "
            f"{bbq['disambig']['mean'] * 100:.1f}) | {_fmt(t['mean'])} | {_fmt(t['side_effects']['ce'], 1)} | "
            f"{_fmt(t['side_effects']['kl'], 1)} |")
    lines += ["", "Paper, Llama-3.1-8B, Table 1 (for orientation only; another model, other splits):", "",
              "| method | TruthfulQA MC2 | ToxiGen | BBQ |", "|---|---|---|---|"]
    for name, (a, b, c) in PAPER_TABLE1.items():
        lines.append(f"| {METHOD_LABELS[name]} (paper) | {a} | {b} | {c} |")
    a, b, c = PAPER_TABLE4_UNIFORM
    lines.append(f"| {METHOD_LABELS['uniform_gates']} (paper, Table 4) | {a} | {b} | {c} |")
    bb = report.get("bootstrap_vs_best_baseline")
    if bb:
        lines += ["", f"MAT-Steer minus the best baseline by dev score ({report['best_baseline']['name']}), paired "
                  "bootstrap 95% CI over test questions (seed-averaged scores):", ""]
        for task, ci in bb.items():
            lines.append(f"- {task} ({PRIMARY[task]}): {ci['mean_diff'] * 100:+.2f} points "
                         f"[{ci['low'] * 100:+.2f}, {ci['high'] * 100:+.2f}]")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path, name: str = "eval",
                 table: Callable[[dict[str, Any]], str] = markdown_table) -> None:
    """``{name}.json`` and its markdown ``table`` as ``{name}.md``, each written whole or not at all."""
    from .io import atomic_path

    write_json(Path(out_dir) / f"{name}.json", report)
    with atomic_path(Path(out_dir) / f"{name}.md") as tmp:
        tmp.write_text(table(report), encoding="utf-8")
