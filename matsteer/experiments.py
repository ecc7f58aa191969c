"""The paper's comparison on the default model: every method trained on the same features, tuned on dev only,
scored on the held-out test questions over several seeds, with side effects and a paired bootstrap.

``run_evaluation(EvalConfig())`` writes ``results/eval.json`` and ``results/eval.md``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .baselines import mass_mean_shift, mean_difference, pca_of_differences, sum_of_single, uniform_gates
from .errors import ConfigError
from .evaluate import PRIMARY, TASKS, Evaluator, Method, few_shot_prefix, select_on_dev
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


@dataclass
class EvalConfig:
    """What the default evaluation runs. ``quick`` limits question counts; ``full`` uses whole test splits."""

    demo: DemoConfig = field(default_factory=DemoConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    dev_limits: dict[str, int | None] = field(default_factory=lambda: {"truthfulqa": None, "toxigen": 120, "bbq": 120})
    test_limits: dict[str, int | None] = field(default_factory=lambda: {"truthfulqa": None, "toxigen": 300, "bbq": 300})
    multipliers: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    iti_alphas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    icl_shots: tuple[int, ...] = (1, 3)
    # Training settings compared on dev (seed 0) to choose MAT-Steer's default: (loss variant, sigma).
    training_candidates: tuple[tuple[str, float | str], ...] = (
        ("paper", 2.0), ("paper", "median"), ("reference", 2.0), ("reference", "median"))
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
        cfg.dev_limits = dict.fromkeys(cfg.dev_limits)
        cfg.test_limits = dict.fromkeys(cfg.test_limits)
        return cfg


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _grid(build: Callable[[float], Method], values: Sequence[float]) -> list[Method]:
    return [build(v) for v in values]


class Experiment:
    """Holds the model, features and evaluators so methods and ablations share one set-up."""

    def __init__(self, cfg: EvalConfig, progress: bool = True) -> None:
        from .models import load_model

        self.cfg, self.progress = cfg, progress
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.loaded = load_model(cfg.demo.model, progress=progress)
        self.site = Site(cfg.demo.layer, cfg.demo.site)
        self.train_sets = extract_splits(self.loaded, cfg.demo, "train", cfg.demo.limits, progress)
        self.dev_sets = extract_splits(self.loaded, cfg.demo, "dev", cfg.demo.dev_limits, progress)
        self.timings["extract_s"] = time.perf_counter() - t0
        self.train_data = [attribute_data(fs) for fs in self.train_sets]
        self.dev_data = [attribute_data(fs) for fs in self.dev_sets]
        self.contrasts = {a.name: (a.positives, a.negatives) for a in self.train_data}
        t0 = time.perf_counter()
        self.dev = Evaluator(self.loaded, self.site, "dev", cfg.dev_limits, positions=cfg.positions, progress=progress)
        self.test = Evaluator(self.loaded, self.site, "test", cfg.test_limits, positions=cfg.positions,
                              progress=progress)
        self.timings["cache_questions_s"] = time.perf_counter() - t0

    # -- training ---------------------------------------------------------------------------------------------
    def train_config(self, seed: int, variant: str = "paper", sigma: float | str = "median") -> TrainConfig:
        cfg = TrainConfig(**{**self.cfg.demo.train.to_dict(), "seed": seed, "loss_variant": variant, "sigma": sigma})
        return cfg

    def train_mat(self, config: TrainConfig, data: Sequence[Any] | None = None) -> Steerer:
        t0 = time.perf_counter()
        result = train(list(data or self.train_data), config, progress=False)
        self.timings["train_s"] = self.timings.get("train_s", 0.0) + time.perf_counter() - t0
        return result.steerer

    # -- method builders (dev-tuned) ---------------------------------------------------------------------------
    def tuned(self, name: str, candidates: list[Method], kl_limit: float | None = None) -> tuple[Method, list]:
        best, trials = select_on_dev(self.dev, candidates, kl_limit=kl_limit)
        best.name = name
        return best, trials

    def mat_candidates(self, steerer: Steerer, name: str, preserve_norm: bool = True) -> list[Method]:
        return _grid(lambda m: Method(name, steerer, global_multiplier=m, preserve_norm=preserve_norm,
                                      params={"multiplier": m}), self.cfg.multipliers)

    def baseline_candidates(self, name: str, seed: int) -> list[Method]:
        c = self.contrasts
        if name == "iti":
            return [Method(name, mass_mean_shift(c, a), preserve_norm=False, params={"alpha": a})
                    for a in self.cfg.iti_alphas]
        if name == "caa":
            return _grid(lambda m: Method(name, mean_difference(c, m), preserve_norm=False, params={"multiplier": m}),
                         self.cfg.multipliers)
        if name == "pca":
            return _grid(lambda m: Method(name, pca_of_differences(c, m, seed=seed), preserve_norm=False,
                                          params={"multiplier": m}), self.cfg.multipliers)
        if name == "icl":
            return [Method(name, prefix={t: few_shot_prefix(t, k, seed) for t in TASKS}, params={"shots": k})
                    for k in self.cfg.icl_shots]
        raise ConfigError(f"Unknown baseline {name!r}.")


def select_training_default(ex: Experiment) -> dict[str, Any]:
    """Train each (loss variant, σ) candidate with the first seed, tune its multiplier on dev, keep the best."""
    trials = []
    for variant, sigma in ex.cfg.training_candidates:
        steerer = ex.train_mat(ex.train_config(ex.cfg.seeds[0], variant, sigma))
        best, grid = ex.tuned("mat_steer", ex.mat_candidates(steerer, "mat_steer"), kl_limit=float("inf"))
        trials.append({"loss_variant": variant, "sigma": sigma, "dev_mean": max(g["dev_mean"] for g in grid),
                       "multiplier": best.params["multiplier"], "grid": grid})
    return {"trials": trials, "chosen": max(trials, key=lambda t: t["dev_mean"])}


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
    """The whole comparison; writes ``eval.json`` and ``eval.md`` to ``cfg.out_dir`` and returns the report."""
    cfg = cfg or EvalConfig()
    t_start = time.perf_counter()
    ex = Experiment(cfg, progress)
    report: dict[str, Any] = {"config": cfg.to_dict(), "selection": {}, "methods": {}}

    # 1. MAT-Steer's training default, chosen on dev with seed 0 (never on test).
    selection = select_training_default(ex)
    report["selection"]["training_default"] = selection
    variant, sigma = selection["chosen"]["loss_variant"], selection["chosen"]["sigma"]

    # 2. Every method on test: trained ones per seed (tuned on dev per seed), closed-form ones per seed of pairing.
    results: dict[str, list[dict[str, Any]]] = {}
    params: dict[str, list[Any]] = {}

    def record(name: str, method: Method, grid: list) -> None:
        results.setdefault(name, []).append(ex.test.evaluate(method))
        params.setdefault(name, []).append({"chosen": method.params, "dev_trials": grid})

    none = Method("none")
    for _ in cfg.seeds:  # deterministic, but kept per seed so every method has the same shape
        results.setdefault("none", []).append(ex.test.evaluate(none))
    for seed in cfg.seeds:
        for name in ("icl", "iti", "caa", "pca"):
            record(name, *ex.tuned(name, ex.baseline_candidates(name, seed)))
        tc = ex.train_config(seed, variant, sigma)
        mat = ex.train_mat(tc)
        record("mat_steer", *ex.tuned("mat_steer", ex.mat_candidates(mat, "mat_steer")))
        record("uniform_gates", *ex.tuned("uniform_gates", ex.mat_candidates(uniform_gates(mat), "uniform_gates")))
        singles = [ex.train_mat(tc, [a]) for a in ex.train_data]
        record("sum_single", *ex.tuned("sum_single", ex.mat_candidates(sum_of_single(singles), "sum_single")))

    for name, per_seed in results.items():
        report["methods"][name] = {"label": METHOD_LABELS[name], "test": _summarise(per_seed),
                                   "selection": params.get(name, [])}

    # 3. MAT-Steer minus the best baseline, the baseline picked by its dev score (not test).
    baselines = [n for n in results if n not in ("mat_steer",)]
    dev_best = {n: max(t["dev_mean"] for p in params.get(n, [{"dev_trials": [{"dev_mean": float("-inf")}]}])
                       for t in p["dev_trials"]) for n in baselines if n != "none"}
    best_baseline = max(dev_best, key=dev_best.get)
    report["best_baseline"] = {"name": best_baseline, "dev_means": dev_best}
    boot = {}
    mat_t = report["methods"]["mat_steer"]["test"]
    base_t = report["methods"][best_baseline]["test"]
    for task in TASKS:
        ci = paired_bootstrap_ci(mat_t[task]["per_item"], base_t[task]["per_item"], n_boot=cfg.n_boot, seed=0)
        boot[task] = asdict(ci)
    report["bootstrap_vs_best_baseline"] = boot
    report["timings"] = {**ex.timings, "total_s": time.perf_counter() - t_start}
    report["provenance"] = provenance(ex)
    write_report(report, cfg.out_dir)
    return report


def provenance(ex: Experiment) -> dict[str, Any]:
    from .artifacts import library_versions

    return {
        "model": {"name": ex.loaded.name, "weight_hash": ex.loaded.weight_hash},
        "site": ex.site.to_dict(),
        "features": {fs.attribute: {"train_cache_key": fs.manifest["cache_key"], "texts_sha256": fs.manifest["texts_sha256"]}
                     for fs in ex.train_sets},
        "git_commit": git_commit(),
        "libraries": library_versions(),
        "machine": {"torch_threads": torch.get_num_threads()},
    }


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


def write_report(report: dict[str, Any], out_dir: Path, name: str = "eval") -> None:
    from .io import atomic_path

    write_json(Path(out_dir) / f"{name}.json", report)
    with atomic_path(Path(out_dir) / f"{name}.md") as tmp:
        tmp.write_text(markdown_table(report), encoding="utf-8")
