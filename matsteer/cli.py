"""The ``matsteer`` command line: a thin shell over the library (``matsteer <command> --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, MatSteerError

DATASETS = ("truthfulqa", "toxigen", "bbq", "hh_rlhf", "paradetox")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{DEFAULT_MODEL} (embedded), a local folder or a HF id")
    _add_dtype_arg(p)
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--device-map", "--device_map", dest="device_map", default=None,
                   help="accelerate device map for large models, e.g. auto (spreads over all GPUs)")


def _add_dtype_arg(p: argparse.ArgumentParser) -> None:
    from .models import DTYPE_CHOICES

    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="compute dtype: auto = bfloat16 where the hardware has it (GPUs, CPUs with AVX512-BF16 / AMX), "
                        "else float32; float32 forces the exact path")


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", default=None, metavar="TASK=PATH",
                   help="score a local file (or BBQ folder) for TASK instead of the shipped data, in the schema the "
                        "shipped data uses (data/README.md); repeatable. toxigen=PATH also feeds toxigen_pref; "
                        "paradetox=PATH replaces the neutral text of the side effects. The file is split like the "
                        "shipped one (by question, seeded); eval --split all scores all of it")
    p.add_argument("--steer-special", dest="steer_special", action="store_true",
                   help="also steer the first token and special tokens (left unsteered by default; an ablation)")


def cmd_extract(args: argparse.Namespace) -> int:
    from .data import load_examples
    from .features import extract_to_folder
    from .models import load_model
    from .pipeline import feature_dir
    from .sites import Site

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
    from .artifacts import save_training_result
    from .pipeline import train_from_features
    from .sites import Site
    from .train import TrainConfig


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
    result, origin, info = train_from_features(args.features, config, args.dev_features, probe=not args.no_probe)
    out = save_training_result(args.out, result, site=Site.from_dict(origin["site"]), model_name=origin["model"]["name"],
                               model_hash=origin["model"]["weight_hash"], data_info=info)
    final = result.history.final("train") or {}
    print(f"{out}: {len(result.steerer.attributes)} attributes {result.steerer.attributes}, {result.steps} steps in "
          f"{result.wall_time_s:.1f} s ({result.steps_per_s:.0f} steps/s), sigma {result.sigma_used:.3g}, "
          f"preset {args.preset}")
    for term, values in sorted(final.items()):
        print(f"  final {term:<7} " + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))
    if result.health is not None:
        from .health import health_table

        print("\nTraining health on the dev features (docs/training.md):\n" + health_table(result.health))
    else:
        print("\n(no --dev-features: no training-health report; pass them to check the gates and vectors)")
    return 0


def _parse_multipliers(items: Sequence[str] | None) -> tuple[float, dict[str, float]]:
    """``--multiplier 2`` (global) and/or ``--multiplier toxicity=1.5`` (per attribute)."""
    global_m, per = 1.0, {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if sep:
                per[name] = float(value)
            else:
                global_m = float(name)
        except ValueError as exc:
            raise ConfigError(f"Bad --multiplier {item!r}: use a number (global) or NAME=NUMBER.") from exc
    return global_m, per


@dataclass
class _Steered:
    steerer: Any
    manifest: dict[str, Any]
    loaded: Any
    site: Any
    global_m: float
    per: dict[str, float]


def _load_steered(args: argparse.Namespace) -> _Steered:
    """The saved steerer, its multipliers (unknown attributes refused before the model loads), the model it was
    trained on (or ``--model``) and its site, with compatibility warnings printed."""
    from .artifacts import check_compatible, load_steerer
    from .models import load_model
    from .sites import Site

    steerer, manifest = load_steerer(args.steerer)
    global_m, per = _parse_multipliers(args.multiplier)
    steerer.scale_vector(per, global_m)
    loaded = load_model(args.model or manifest["model"]["name"], dtype=args.dtype, device=args.device,
                        device_map=args.device_map)
    site = Site.from_dict(manifest["site"])
    for warning in check_compatible(manifest, model_name=loaded.name, model_hash=loaded.weight_hash,
                                    d=loaded.hidden_size, site=site, allow_model_mismatch=args.allow_model_mismatch):
        print(f"warning: {warning}", file=sys.stderr)
    return _Steered(steerer, manifest, loaded, site, global_m, per)


def cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline import compare_generations

    st = _load_steered(args)
    loaded, steerer, site, per, global_m = st.loaded, st.steerer, st.site, st.per, st.global_m
    gens = compare_generations(loaded, steerer, site, args.prompt, multipliers=per, global_multiplier=global_m,
                               max_new_tokens=args.max_new_tokens, chat=not args.raw, positions=args.positions)
    for g in gens:
        print(f"prompt   : {g.prompt}\nunsteered: {g.unsteered}\nsteered  : {g.steered}\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .io import write_json
    from .pipeline import DemoConfig, run_demo

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
    from .viz import save_figure

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


def _steerer_figures(steerer_dir: str, feature_dirs: Sequence[str]) -> dict:
    from .artifacts import load_history, load_steerer
    from .features import load_features
    from .viz import (
        gate_sets,
        plot_gate_distributions,
        plot_orthogonality,
        plot_pca,
        plot_training_curves,
        steered_sets,
    )

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


def _result_figures(folder: Path) -> dict:
    """``eval.json`` -> method table and bars; ``ablations/<name>.json`` -> that ablation's figure."""
    from .ablations import ABLATIONS
    from .io import read_json
    from .viz import figures_from_ablation, figures_from_report

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
    from .evaluate import parse_sources
    from .experiments import EvalConfig, run_evaluation

    cfg = EvalConfig.reference() if args.reference else EvalConfig.full() if args.full else EvalConfig()
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
    if args.multipliers:
        cfg.multipliers = tuple(args.multipliers)
    report = run_evaluation(cfg)
    print((cfg.out_dir / "eval.md").read_text(encoding="utf-8"))
    print(f"wrote {cfg.out_dir / 'eval.json'} and eval.md; best baseline by dev: {report['best_baseline']['name']}")
    return 0


def _fmt_side(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cmd_eval(args: argparse.Namespace) -> int:
    """One saved steerer (and, with --baseline, the unsteered model) on the named tasks of one split, beside each
    task's constant answer."""
    from .artifacts import TENSORS
    from .evaluate import DATA_OF, PRIMARY, PROBES, Evaluator, Method, parse_sources
    from .experiments import source_hashes
    from .io import sha256_file, write_json
    from .provenance import collect

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
    from .ablations import describe, run_ablations
    from .experiments import EvalConfig

    cfg = EvalConfig.full() if args.full else EvalConfig()
    eval_json = None if args.from_eval == "none" else args.from_eval
    options = {"layers": {"candidates": args.layers}} if args.layers else {}
    out = run_ablations(args.names, cfg, seeds=args.seeds, eval_json=eval_json, out_dir=args.out, options=options)
    for name, res in out.items():
        print(f"{name} (setting from {res['setting']['source']}):\n{describe(res)}")
    print(f"wrote {', '.join(f'{args.out}/{n}.json' for n in out)}")
    return 0


def cmd_winrates(args: argparse.Namespace) -> int:
    from .experiments import EvalConfig
    from .judge import OpenAICompatibleJudge
    from .winrates import WinRateConfig, run_win_rates

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


def cmd_export_control_vector(args: argparse.Namespace) -> int:
    """One attribute of a saved steerer as a llama.cpp control vector (GGUF); the gate is not carried."""
    from .export import export_steerer_folder

    done = export_steerer_folder(args.steerer, args.attribute, args.out, multiplier=args.multiplier,
                                 model_hint=args.model_hint, warn=False)
    print(f"warning: {done.note}", file=sys.stderr)
    print(f"{done.path}: tensor {done.tensor} = {done.multiplier:g} x the {done.attribute!r} vector (output of "
          f"decoder block {done.layer}). Use: llama-cli -m MODEL.gguf --control-vector-scaled {done.path} 1.0")
    return 0


def _add_export_parser(sub: Any) -> None:
    p = sub.add_parser("export-control-vector",
                       help="one attribute's vector as a llama.cpp control vector (GGUF); gates are not carried")
    p.add_argument("--steerer", required=True, help="steerer folder (trained at a residual-stream site)")
    p.add_argument("--attribute", required=True, help="the attribute whose vector to export, e.g. toxicity")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--multiplier", type=float, default=1.0, help="scale baked into the vector (default 1)")
    p.add_argument("--model-hint", dest="model_hint", default=None,
                   help="controlvector.model_hint (default: the steerer's model name; llama.cpp does not check it)")
    p.set_defaults(func=cmd_export_control_vector)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matsteer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract activations of a dataset split at one site into a feature folder")
    _add_model_args(p)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--split", default="train", choices=("train", "dev", "test", "all"))
    p.add_argument("--layer", type=int, default=14)
    p.add_argument("--site", default="residual", choices=("residual", "attn_output", "attn_heads"))
    p.add_argument("--tokens", default="answer", choices=("all", "answer", "last"),
                   help="all tokens (the paper), the answer span (default), or the last token (the reference code)")
    p.add_argument("--out", default=None, help="feature folder (default: features/<model>/<dataset>-<split>-L<layer>-...)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N groups (questions) of the split")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    p.add_argument("--max-length", dest="max_length", type=int, default=512, help="truncate texts to this many tokens")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="train a MAT-Steer steerer on feature folders (one per attribute)")
    p.add_argument("--features", nargs="+", required=True, help="training feature folders, one per attribute")
    p.add_argument("--dev-features", "--dev_features", dest="dev_features", nargs="+", default=None)
    p.add_argument("--out", required=True, help="steerer folder to write")
    p.add_argument("--preset", default="default", choices=("default", "paper", "reference"),
                   help="default: the workbench's training (docs/training.md); paper / reference: their exact settings")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=None,
                   help="total batch (the reference's flag): 2 x 16 x attributes; sets --batch-per-side")
    p.add_argument("--batch-per-side", "--batch_per_side", dest="batch_per_side", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--sigma", default=None, help='kernel width, or "median" (see docs/losses.md)')
    p.add_argument("--lambda_mmd", "--lambda-mmd", dest="lambda_mmd", type=float, default=None)
    p.add_argument("--lambda_sparse", "--lambda-sparse", dest="lambda_sparse", type=float, default=None)
    p.add_argument("--lambda_ortho", "--lambda-ortho", dest="lambda_ortho", type=float, default=None)
    p.add_argument("--lambda_pos", "--lambda-pos", dest="lambda_pos", type=float, default=None)
    p.add_argument("--lambda_gate", "--lambda-gate", dest="lambda_gate", type=float, default=None)
    p.add_argument("--loss-variant", "--loss_variant", dest="loss_variant", default=None, choices=("paper", "reference"))
    p.add_argument("--gate-input", dest="gate_input", default=None, choices=("raw", "standardized"))
    p.add_argument("--gate-loss", dest="gate_loss", default=None, choices=("none", "supervised"))
    p.add_argument("--gate-scope", dest="gate_scope", default=None, choices=("own", "cross"))
    p.add_argument("--theta-init", dest="theta_init", default=None, choices=("randn", "zero"))
    p.add_argument("--standardize", action="store_true", help="measure kernel distances in per-dimension z-scores")
    p.add_argument("--no-norm-preserve", action="store_true", help="do not rescale steered activations to ||a||")
    p.add_argument("--no-probe", action="store_true", help="skip the logistic-probe yardstick in the health report")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="print unsteered and steered generations for prompts")
    _add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument("--steerer", required=True, help="steerer folder (from matsteer train)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--multiplier", action="append", help="global NUMBER, or NAME=NUMBER per attribute (repeatable)")
    p.add_argument("--positions", default="all", choices=("all", "prompt", "generated", "last"))
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=48)
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--allow-model-mismatch", action="store_true", help="steer a model other than the one trained on")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("figures", help="regenerate figures from a saved steerer and/or saved results")
    p.add_argument("--steerer", default=None)
    p.add_argument("--features", nargs="+", default=None, help="the feature folders the steerer was trained on")
    p.add_argument("--results", default=None, help="folder with eval.json and/or ablations/*.json")
    p.add_argument("--out", default="figures")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("compare", help="the paper's method comparison: all methods tuned on dev, 3 seeds on test")
    p.add_argument("--full", action="store_true", help="whole training and test splits (slow)")
    p.add_argument("--reference", action="store_true",
                   help="the committed reference run (EvalConfig.reference: whole test splits, larger dev and "
                        "training sets, positions in the dev grid), written to results/reference unless --out")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--layer", type=int, default=14, help="the steered layer (`matsteer ablate layers` sweeps it on dev)")
    p.add_argument("--positions", default=None, nargs="+", choices=("prompt", "all", "last", "random"),
                   help="which tokens every method steers while scoring (the paper: the query, 'prompt'); several "
                        "values make it part of every steering method's dev grid, e.g. --positions prompt all")
    p.add_argument("--multipliers", type=float, nargs="+", default=None,
                   help="the dev grid of every steering method's multiplier (default 0.5 1 2)")
    p.add_argument("--out", default=None, help="results folder (default results, or results/reference)")
    _add_dtype_arg(p)
    _add_source_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("eval", help="score a saved steerer on QA tasks (optionally against no steering)")
    _add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument("--steerer", required=True)
    p.add_argument("--tasks", default="truthfulqa,toxigen_pref,bbq,toxigen",
                   help="comma-separated: truthfulqa,toxigen_pref,bbq,toxigen,hh_rlhf (toxigen, the Yes/No probe, "
                        "is scored but left out of the mean)")
    p.add_argument("--split", default="test", choices=("train", "dev", "test", "all"),
                   help="which part of each task's data (all: every question, e.g. of a --source file)")
    p.add_argument("--limit", type=int, default=None, help="first N questions per task (default: all)")
    p.add_argument("--baseline", action="store_true", help="also score the unsteered model")
    p.add_argument("--multiplier", action="append", help="global NUMBER, or NAME=NUMBER per attribute (repeatable)")
    p.add_argument("--positions", default="prompt", choices=("prompt", "all", "last", "random"),
                   help="tokens to steer while scoring (the paper: the prompt)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--allow-model-mismatch", action="store_true")
    _add_source_args(p)
    p.set_defaults(func=cmd_eval)

    from .ablations import ABLATIONS

    p = sub.add_parser("ablate", help="ablations and analyses: " + ", ".join(ABLATIONS))
    p.add_argument("names", nargs="+", choices=ABLATIONS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--from-eval", dest="from_eval", default="results/eval.json",
                   help="eval.json whose dev-chosen MAT-Steer setting to use, or none for the defaults")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers for the layer sweep")
    p.add_argument("--full", action="store_true", help="whole training and test splits (slow)")
    p.add_argument("--out", default="results/ablations")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("winrates", help="generation win rates of MAT-Steer on HH-RLHF harmless prompts, judged")
    p.add_argument("--from-eval", dest="from_eval", default="results/eval.json",
                   help="eval.json whose dev-chosen settings the methods use")
    p.add_argument("--n", type=int, default=40, help="number of held-out prompts")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"))
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=48)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--judge-url", dest="judge_url", default=None,
                   help="an OpenAI-compatible endpoint (e.g. https://api.openai.com/v1); default: the default "
                        "model as a weak local judge")
    p.add_argument("--judge-model", dest="judge_model", default=None)
    p.add_argument("--judge-key-env", dest="judge_key_env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key ('' for none)")
    p.add_argument("--out", default="results")
    p.set_defaults(func=cmd_winrates)

    p = sub.add_parser("demo", help="the main job on the embedded default model (make demo)")
    p.add_argument("--full", action="store_true", help="whole training/dev splits instead of the quick subsets")
    p.set_defaults(func=cmd_demo)

    _add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MatSteerError as exc:
        print(f"\nmatsteer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
