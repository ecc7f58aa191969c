"""The ``matsteer`` sub-commands: each reads its parsed arguments, calls the library and prints what it did."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from matsteer.activations.features import extract_to_folder, feature_dir, load_features
from matsteer.activations.models import LoadedModel, load_model
from matsteer.activations.sites import Site
from matsteer.app.demo import run_demo
from matsteer.core.config import TrainConfig
from matsteer.core.health import health_table
from matsteer.core.steerer import Steerer
from matsteer.core.workflow import DemoConfig, train_from_features
from matsteer.data import load_examples
from matsteer.errors import ConfigError
from matsteer.eval.ablations import ABLATIONS, describe, run_ablations
from matsteer.eval.comparison import run_evaluation
from matsteer.eval.config import EvalConfig
from matsteer.eval.evaluator import Evaluator, Method
from matsteer.eval.experiment import source_hashes
from matsteer.eval.extend import add_methods
from matsteer.eval.gate_analysis import gate_sets, steered_sets, training_background
from matsteer.eval.harness import parse_multipliers
from matsteer.eval.openai_judge import OpenAICompatibleJudge
from matsteer.eval.plan import measured_costs, search_plan
from matsteer.eval.tasks import DATA_OF, PRIMARY, PROBES, parse_sources
from matsteer.eval.toxicity import run_toxicity
from matsteer.eval.truthful_generation import run_truthfulqa_generation
from matsteer.eval.winrates import WinRateConfig, run_win_rates
from matsteer.files import read_json, sha256_file, write_json
from matsteer.steering.generation import compare_generations
from matsteer.store.artifacts import (
    TENSORS,
    check_compatible,
    load_history,
    load_steerer,
    save_training_result,
)
from matsteer.store.export import export_steerer_folder
from matsteer.store.provenance import collect
from matsteer.viz.figures import figures_from_ablation, figures_from_report
from matsteer.viz.paper import write_paper
from matsteer.viz.plots import plot_gate_distributions, plot_orthogonality, plot_pca, plot_training_curves
from matsteer.viz.style import save_figure


def cmd_extract(args: argparse.Namespace) -> int:
    site = Site(args.layer, args.site)
    examples = load_examples(args.dataset, args.split, limit=args.limit)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    out = Path(args.out) if args.out else feature_dir(Path("features"), args.model, args.dataset, args.split, site,
                                                      args.tokens)
    fs = extract_to_folder(loaded, examples, site, out, tokens=args.tokens, dataset=args.dataset, split=args.split,
                           batch_size=args.batch_size, max_length=args.max_length)
    m = fs.manifest
    print(f"{out}: {m['rows']} rows x d={m['d']} from {m['texts']} texts "
          f"({m['positives']} positive / {m['negatives']} negative rows) at {site}, tokens={args.tokens}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.sigma is not None:
        try:
            overrides["sigma"] = args.sigma if args.sigma == "median" else float(args.sigma)
        except ValueError as exc:
            raise ConfigError(f"--sigma must be a positive number or 'median', got {args.sigma!r}.") from exc
    if args.batch_size is not None:  # the reference's total batch: positives + negatives of every attribute
        per_side, rest = divmod(args.batch_size, 2 * len(args.features))
        if rest or per_side < 1:
            raise ConfigError(f"--batch_size {args.batch_size} is not 2 x k x {len(args.features)} attributes "
                              "(e.g. 96 = 2 x 16 x 3); or pass --batch-per-side.")
        args.batch_per_side = per_side
    for name in ("epochs", "batch_per_side", "lr", "lambda_mmd", "lambda_sparse", "lambda_ortho", "lambda_pos",
                 "lambda_gate", "loss_variant", "gate_input", "gate_loss", "gate_scope", "theta_init", "seed",
                 "device"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_norm_preserve:
        overrides["preserve_norm"] = False
    if args.standardize:
        overrides["standardize"] = True
    config = TrainConfig.preset(args.preset, **overrides)
    result, origin, info = train_from_features(args.features, config, args.dev_features, probe=not args.no_probe,
                                               background=_training_background(args.features, config))
    out = save_training_result(args.out, result, site=Site.from_dict(origin["site"]), model_name=origin["model"]["name"],
                               model_hash=origin["model"]["weight_hash"], data_info=info)
    final = result.history.final("train") or {}
    print(f"{out}: {len(result.steerer.attributes)} attributes {result.steerer.attributes}, {result.steps} steps in "
          f"{result.wall_time_s:.1f} s ({result.steps_per_s:.0f} steps/s), sigma {result.sigma_used:.3g}, "
          f"preset {args.preset}")
    for term, values in sorted(final.items()):
        print(f"  final {term:<7} " + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))
    if result.health is not None:
        print("\nTraining health on the dev features (docs/training.md):\n" + health_table(result.health))
    else:
        print("\n(no --dev-features: no training-health report; pass them to check the gates and vectors)")
    return 0


def _training_background(features: Sequence[str], config: TrainConfig) -> torch.Tensor | None:
    """The background rows a preset with the background gate term or the bias calibration needs (None for the
    others): the features' own model, at their site, run on :func:`~matsteer.eval.gate_analysis.
    training_background`'s texts for the features' data sets."""
    if config.lambda_background == 0 and config.calibrate_fpr is None:
        return None
    manifests = [read_json(Path(f) / "manifest.json", "feature manifest") for f in features]
    first = manifests[0]
    loaded = load_model(first["model"]["name"], dtype=first["dtype"].removeprefix("torch."))
    if loaded.weight_hash != first["model"]["weight_hash"]:
        raise ConfigError(f"{features[0]} was extracted from other weights than {first['model']['name']!r} has now; "
                          "extract the features again.")
    datasets = sorted({m["dataset"] for m in manifests})
    return training_background(loaded, Site.from_dict(first["site"]), datasets)


@dataclass
class _Steered:
    """A saved steerer ready to use: its manifest, the model it steers, its site and the multipliers asked for."""

    steerer: Steerer
    manifest: dict[str, Any]
    loaded: LoadedModel
    site: Site
    global_m: float
    per: dict[str, float]


def _load_steered(args: argparse.Namespace) -> _Steered:
    """The saved steerer, its multipliers (unknown attributes refused before the model loads), the model it was
    trained on (or ``--model``) and its site, with compatibility warnings printed."""

    steerer, manifest = load_steerer(args.steerer)
    global_m, per = parse_multipliers(args.multiplier)
    steerer.scale_vector(per, global_m)
    loaded = load_model(args.model or manifest["model"]["name"], dtype=args.dtype, device=args.device,
                        device_map=args.device_map)
    site = Site.from_dict(manifest["site"])
    for warning in check_compatible(manifest, model_name=loaded.name, model_hash=loaded.weight_hash,
                                    d=loaded.hidden_size, site=site, allow_model_mismatch=args.allow_model_mismatch):
        print(f"warning: {warning}", file=sys.stderr)
    return _Steered(steerer, manifest, loaded, site, global_m, per)


def cmd_generate(args: argparse.Namespace) -> int:
    st = _load_steered(args)
    loaded, steerer, site, per, global_m = st.loaded, st.steerer, st.site, st.per, st.global_m
    gens = compare_generations(loaded, steerer, site, args.prompt, multipliers=per, global_multiplier=global_m,
                               max_new_tokens=args.max_new_tokens, chat=not args.raw, positions=args.positions)
    for g in gens:
        print(f"prompt   : {g.prompt}\nunsteered: {g.unsteered}\nsteered  : {g.steered}\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig()
    if args.full:
        cfg.limits = {k: None for k in cfg.limits}
        cfg.dev_limits = {k: None for k in cfg.dev_limits}
    report = run_demo(cfg)
    write_json(cfg.out_dir / "demo.json", report)
    print(f"\nwrote {cfg.out_dir / 'demo.json'}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    """Figures from a saved steerer and its feature folders, and/or from saved results (no model passes)."""
    if not args.steerer and not args.results:
        raise ConfigError("Pass --steerer DIR --features DIR... (gate and vector figures) and/or --results DIR "
                          "(evaluation and ablation figures).")
    figures = {}
    if args.steerer:
        if not args.features:
            raise ConfigError("--steerer needs --features: the feature folders it was trained on.")
        figures.update(_steerer_figures(args.steerer, args.features))
    if args.results:
        figures.update(_result_figures(Path(args.results)))
    for name, fig in figures.items():
        save_figure(fig, name, args.out)
        print(f"{args.out}/{name}.png")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    """The paper's tables and figures beside ours from saved results (no model passes): paper.md and PNGs."""
    for path in write_paper(args.results, args.out):
        print(path)
    return 0


def _steerer_figures(steerer_dir: str, feature_dirs: Sequence[str]) -> dict[str, Figure]:
    """Orthogonality, PCA of steered sets and gate distributions (and training curves when the history is saved)."""
    steerer, _ = load_steerer(steerer_dir)
    sets = [load_features(p) for p in feature_dirs]
    figures = {
        "orthogonality": plot_orthogonality(steerer.theta.detach(), steerer.attributes),
        "pca_steered": plot_pca(steered_sets(steerer, sets)),
        "gate_distributions": plot_gate_distributions(gate_sets(steerer, sets)),
    }
    history = load_history(steerer_dir)
    if history is not None:
        figures["training_curves"] = plot_training_curves(history)
    return figures


def _result_figures(folder: Path) -> dict[str, Figure]:
    """``eval.json`` -> method table and bars; ``ablations/<name>.json`` -> that ablation's figure."""
    figures = {}
    if (folder / "eval.json").is_file():
        figures.update(figures_from_report(read_json(folder / "eval.json")))
    for name in ABLATIONS:
        path = folder / "ablations" / f"{name}.json"
        if path.is_file():
            figures[f"ablation_{name}"] = figures_from_ablation(name, read_json(path))
    if not figures:
        raise ConfigError(f"{folder} holds no eval.json or ablations/*.json; run `matsteer compare` or "
                          "`matsteer ablate` first.")
    return figures


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = (EvalConfig.protocol_reference() if args.protocol_reference else EvalConfig.reference() if args.reference
           else EvalConfig.full() if args.full else EvalConfig())
    cfg.out_dir = Path(args.out or cfg.out_dir)
    cfg.demo.layer = args.layer
    cfg.demo.dtype = args.dtype
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    cfg.sources = parse_sources(args.source)
    cfg.steer_special = args.steer_special
    if args.positions:
        cfg.positions = args.positions[0]
        cfg.position_grid = tuple(args.positions) if len(args.positions) > 1 else ()
    if args.protocols:
        cfg.protocols, cfg.position_grid = tuple(args.protocols), ()
    if args.multipliers:
        cfg.multipliers = tuple(args.multipliers)
    if args.temperatures:
        cfg.temperatures = tuple(args.temperatures)
    if args.kl_budget is not None:
        cfg.kl_budget = args.kl_budget
    if args.norm_grid:
        cfg.norm_grid = tuple(v == "on" for v in args.norm_grid)
    for name in ("grid_extensions", "search", "halving_fraction", "halving_keep"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.layers:
        cfg.layers = tuple(args.layers)
    cfg.settings_from = args.settings_from
    cfg.validate()
    if args.plan:
        costs = measured_costs(args.plan_costs) if (Path(args.plan_costs) / "eval-timings.json").is_file() else None
        print(search_plan(cfg).table(costs))
        return 0
    report = add_methods(cfg.out_dir, args.add, cfg) if args.add else run_evaluation(cfg)
    print((cfg.out_dir / "eval.md").read_text(encoding="utf-8"))
    print(f"wrote {cfg.out_dir / 'eval.json'} and eval.md; best baseline by dev: {report['best_baseline']['name']}")
    return 0


def _fmt_side(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cmd_eval(args: argparse.Namespace) -> int:
    """One saved steerer (and, with --baseline, the unsteered model) on the named tasks of one split, beside each
    task's constant answer."""

    sources = parse_sources(args.source)  # checked before the model loads
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = [t for t in names if t not in PROBES] or names
    probes = [t for t in names if t not in tasks]
    st = _load_steered(args)
    loaded, steerer, manifest, site, per, global_m = st.loaded, st.steerer, st.manifest, st.site, st.per, st.global_m
    evaluator = Evaluator(loaded, site, args.split, dict.fromkeys(names, args.limit), tasks=tasks, probes=probes,
                          positions=args.positions, sources=sources)
    methods = ([Method("none")] if args.baseline else []) + [
        Method("mat_steer", steerer, per, global_m, steer_special=args.steer_special)]
    results = {m.name: evaluator.evaluate(m) for m in methods}
    constant = evaluator.constant()
    health = manifest.get("extra", {}).get("health")
    if health:  # what the steerer learned, from its manifest, beside what it scores
        verdicts = health.get("verdicts") or ["healthy: every target met (docs/training.md)"]
        print("training health (dev, at training time): " + "; ".join(verdicts))
    else:
        print("training health: not recorded (train with --dev-features to get it)")
    for name, res in [("constant", constant), *results.items()]:
        side = res["side_effects"]
        print(f"{name:<10} " + "  ".join(f"{t} {PRIMARY[t]} {res[t][PRIMARY[t]] * 100:.2f}" for t in names)
              + f"  mean {res['mean'] * 100:.2f}  KL {_fmt_side(side['kl'], 4)}  CE {_fmt_side(side['ce'], 3)}")
    if args.json:
        write_json(Path(args.json), {
            "steerer": str(args.steerer), "split": args.split, "tasks": names, "probes": probes, "limit": args.limit,
            "positions": args.positions, "steer_special": args.steer_special, "sources": sources,
            "multipliers": {"global": global_m, **per}, "results": results, "reference": {"constant": constant},
            "provenance": collect(model_name=loaded.name, model_hash=loaded.weight_hash,
                                  datasets=[*{DATA_OF.get(t, t) for t in names}, "paradetox"], seeds=[],
                                  extra={"steerer_sha256": sha256_file(Path(args.steerer) / TENSORS),
                                         "steerer_model": manifest["model"], "site": manifest["site"],
                                         "sources": source_hashes(sources)})})
        print(f"wrote {args.json}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    cfg = EvalConfig.full() if args.full else EvalConfig()
    eval_json = None if args.from_eval == "none" else args.from_eval
    options = {"layers": {"candidates": args.layers}} if args.layers else {}
    out = run_ablations(args.names, cfg, seeds=args.seeds, eval_json=eval_json, out_dir=args.out, options=options,
                        protocol=args.protocol)
    for name, res in out.items():
        print(f"{name} (setting from {res['setting']['source']}):\n{describe(res)}")
    print(f"wrote {', '.join(f'{args.out}/{n}.json' for n in out)}")
    return 0


def cmd_winrates(args: argparse.Namespace) -> int:
    cfg = EvalConfig()
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    judge = None  # the default model itself, a weak judge
    if args.judge_url:
        if not args.judge_model:
            raise ConfigError("--judge-url needs --judge-model (the model name the endpoint serves).")
        judge = OpenAICompatibleJudge(args.judge_url, args.judge_model, api_key_env=args.judge_key_env or None)
    wcfg = WinRateConfig(n_prompts=args.n, split=args.split, max_new_tokens=args.max_new_tokens)
    run_win_rates(cfg, args.from_eval, wcfg, judge=judge, out_dir=Path(args.out))
    print((Path(args.out) / "winrates.md").read_text(encoding="utf-8"))
    print(f"wrote {Path(args.out) / 'winrates.json'} and winrates.md")
    return 0


def _generation_run(args: argparse.Namespace, run: Callable[..., Any], name: str, **options: Any) -> int:
    """A generation measure for a finished comparison's methods (matsteer.eval.generation_runs): ``run`` writes
    ``{name}.json`` / ``.md`` beside the comparison (or to ``--out``)."""
    cfg = EvalConfig.reference() if args.reference else EvalConfig()
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    out = Path(args.out) if args.out else Path(args.from_eval).parent
    run(cfg, args.from_eval, methods=args.methods, out_dir=out, add=args.add, **options)
    print((out / f"{name}.md").read_text(encoding="utf-8"))
    print(f"wrote {out / f'{name}.json'} and {name}.md")
    return 0


def cmd_toxicity(args: argparse.Namespace) -> int:
    """The generation toxicity measure for a finished comparison's methods (matsteer.eval.toxicity)."""
    return _generation_run(args, run_toxicity, "toxicity", n_prompts=args.n)


def cmd_truthfulqa_generation(args: argparse.Namespace) -> int:
    """TruthfulQA generation (BLEU / ROUGE-L accuracy) for a finished comparison's methods."""
    return _generation_run(args, run_truthfulqa_generation, "truthfulqa_generation", n_questions=args.n,
                           max_new_tokens=args.max_new_tokens, prompt_format=args.prompt_format)


def cmd_export_control_vector(args: argparse.Namespace) -> int:
    """One attribute of a saved steerer as a llama.cpp control vector (GGUF); the gate is not carried."""
    done = export_steerer_folder(args.steerer, args.attribute, args.out, multiplier=args.multiplier,
                                 model_hint=args.model_hint, warn=False)
    print(f"warning: {done.note}", file=sys.stderr)
    print(f"{done.path}: tensor {done.tensor} = {done.multiplier:g} x the {done.attribute!r} vector (output of "
          f"decoder block {done.layer}). Use: llama-cli -m MODEL.gguf --control-vector-scaled {done.path} 1.0")
    return 0
