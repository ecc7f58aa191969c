"""The ``matsteer`` command line: a thin shell over the library (``matsteer <command> --help``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from matsteer.errors import MatSteerError

# The parser is built without importing the library (torch, pyvene, matplotlib take seconds), so `--help` is
# instant: each command's implementation is imported when it runs, and these choices are copies of the library's
# (tests/test_lazy_import.py checks each against its source).
DATASETS = ("truthfulqa", "toxigen", "bbq", "hh_rlhf", "paradetox")
DEFAULT_MODEL = "smollm2-135m-instruct"  # matsteer.activations.models.DEFAULT_MODEL
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")  # matsteer.activations.models.DTYPE_CHOICES
ABLATIONS = ("components", "tokens", "data_efficiency", "num_attributes", "paradetox_gates", "layers",
             "interference", "multiplier_sweep", "training_tokens", "targeting")  # matsteer.eval.ablations.ABLATIONS
POSITIONS = ("all", "prompt", "generated", "last")  # matsteer.steering.intervention.POSITIONS


@dataclass(frozen=True)
class Command:
    """A sub-command's implementation by name (``args.func``), imported when the command runs."""

    module: str
    name: str

    def __call__(self, args: argparse.Namespace) -> int | None:
        func = getattr(importlib.import_module(self.module), self.name)
        return func(args)


def _command(name: str) -> Command:
    return Command("matsteer.app.commands", name)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{DEFAULT_MODEL} (embedded), a local folder or a HF id")
    _add_dtype_arg(p)
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--device-map", "--device_map", dest="device_map", default=None,
                   help="accelerate device map for large models, e.g. auto (spreads over all GPUs)")


def _add_dtype_arg(p: argparse.ArgumentParser) -> None:
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


def _add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export-control-vector",
                       help="one attribute's vector as a llama.cpp control vector (GGUF); gates are not carried")
    p.add_argument("--steerer", required=True, help="steerer folder (trained at a residual-stream site)")
    p.add_argument("--attribute", required=True, help="the attribute whose vector to export, e.g. toxicity")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--multiplier", type=float, default=1.0, help="scale baked into the vector (default 1)")
    p.add_argument("--model-hint", dest="model_hint", default=None,
                   help="controlvector.model_hint (default: the steerer's model name; llama.cpp does not check it)")
    p.set_defaults(func=_command("cmd_export_control_vector"))


def _add_generation_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str,
                               items: str, total: int) -> argparse.ArgumentParser:
    """A generation measure run for a finished comparison's methods (matsteer.eval.generation_runs)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--from-eval", dest="from_eval", default="results/reference/eval.json",
                   help="the comparison whose methods and dev choices to use (its folder receives the report)")
    p.add_argument("--reference", action="store_true",
                   help="that comparison is the reference run (its training data: EvalConfig.reference)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every method of the comparison")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--n", type=int, default=None, help=f"test {items} (default: all, {total})")
    p.add_argument("--add", action="store_true", help="add --methods to the report already there")
    p.add_argument("--out", default=None, help="results folder (default: the comparison's)")
    return p


def _add_harness_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``matsteer harness``: lm-eval tasks without and with a steerer (:func:`matsteer.eval.harness.cmd_harness`)."""
    p = sub.add_parser("harness", help="run lm-evaluation-harness tasks without and with a steerer (needs lm-eval)")
    p.add_argument("--steerer", required=True, help="steerer folder (or Hugging Face Hub repo)")
    p.add_argument("--model", default=None, help="model (default: the one the steerer was trained on)")
    p.add_argument("--tasks", required=True, nargs="+", help="lm-eval task names, e.g. mmlu hellaswag ifeval")
    p.add_argument("--include-path", "--include_path", dest="include_path", default=None,
                   help="a folder of extra lm-eval task YAMLs (local tasks)")
    p.add_argument("--multiplier", action="append", default=None, metavar="M | NAME=M",
                   help="global multiplier, or NAME=M for one attribute; repeatable")
    p.add_argument("--positions", default="prompt", choices=POSITIONS,
                   help="tokens to steer: prompt (the context, as the paper; default), all, generated, last")
    p.add_argument("--limit", type=float, default=None, help="items per task (a fraction if < 1)")
    p.add_argument("--num-fewshot", "--num_fewshot", dest="num_fewshot", type=int, default=None)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", default="1", help="a number or auto")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    p.add_argument("--device", default=None, help="e.g. cpu, cuda (default: where the model loads)")
    p.add_argument("--steer-special", dest="steer_special", action="store_true",
                   help="also steer the first token and special tokens (left unsteered by default)")
    p.add_argument("--allow-model-mismatch", dest="allow_model_mismatch", action="store_true")
    p.add_argument("--out", default="results/harness", help="folder for harness.json and harness.md")
    p.set_defaults(func=Command("matsteer.eval.harness", "cmd_harness"))


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
    p.set_defaults(func=_command("cmd_extract"))

    p = sub.add_parser("train", help="train a MAT-Steer steerer on feature folders (one per attribute)")
    p.add_argument("--features", nargs="+", required=True, help="training feature folders, one per attribute")
    p.add_argument("--dev-features", "--dev_features", dest="dev_features", nargs="+", default=None)
    p.add_argument("--out", required=True, help="steerer folder to write")
    p.add_argument("--preset", default="default",
                   choices=("default", "targeted", "targeted-calibrated", "paper", "reference"),
                   help="default: the workbench's training (docs/training.md); targeted(-calibrated): gates also "
                        "trained shut on background text (loads the features' model to read it); paper / "
                        "reference: their exact settings")
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
    p.set_defaults(func=_command("cmd_train"))

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
    p.set_defaults(func=_command("cmd_generate"))

    p = sub.add_parser("figures", help="regenerate figures from a saved steerer and/or saved results")
    p.add_argument("--steerer", default=None)
    p.add_argument("--features", nargs="+", default=None, help="the feature folders the steerer was trained on")
    p.add_argument("--results", default=None, help="folder with eval.json and/or ablations/*.json")
    p.add_argument("--out", default="figures")
    p.set_defaults(func=_command("cmd_figures"))

    p = sub.add_parser("paper", help="the paper's tables and figures beside ours, from saved results (no model): "
                                     "paper.md and PNGs")
    p.add_argument("--results", default="results/reference",
                   help="folder with eval.json, truthfulqa_generation.json and/or toxicity.json")
    p.add_argument("--out", default="figures/paper", help="folder for paper.md and the figures")
    p.set_defaults(func=_command("cmd_paper"))

    p = sub.add_parser("compare", help="the paper's method comparison: all methods tuned on dev, 3 seeds on test")
    p.add_argument("--full", action="store_true", help="whole training and test splits (slow)")
    p.add_argument("--reference", action="store_true",
                   help="the committed reference run (EvalConfig.reference: whole test splits, larger dev and "
                        "training sets, positions in the dev grid), written to results/reference unless --out")
    p.add_argument("--protocol-reference", dest="protocol_reference", action="store_true",
                   help="the reference as a reviewer asks for it (EvalConfig.protocol_reference: one table per "
                        "protocol, 5 seeds, geometric grids, norm and layer on dev, a KL budget, the halving search)")
    p.add_argument("--protocols", nargs="+", default=None, choices=("prompt", "generated", "all", "last"),
                   help="one table per protocol, each with its own dev selection, the first the primary one, e.g. "
                        "--protocols prompt (the paper's alone) or prompt generated all")
    p.add_argument("--plan", action="store_true",
                   help="print what the comparison would run (trials, test rows) and its estimated time, run nothing")
    p.add_argument("--plan-costs", dest="plan_costs", default="results/reference",
                   help="the finished comparison whose measured seconds per trial and per test row --plan uses")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--layer", type=int, default=14, help="the steered layer (`matsteer ablate layers` sweeps it on dev)")
    p.add_argument("--positions", default=None, nargs="+", choices=("prompt", "all", "generated", "last", "random"),
                   help="which tokens every method steers while scoring (the paper: the query, 'prompt'; "
                        "'generated': the answer tokens only); several values make it part of every steering "
                        "method's dev grid, e.g. --positions prompt all")
    p.add_argument("--multipliers", type=float, nargs="+", default=None,
                   help="the dev grid of every steering method's multiplier (default 0.5 1 2)")
    p.add_argument("--out", default=None, help="results folder (default results, or results/reference)")
    p.add_argument("--kl-budget", type=float, default=None,
                   help="dev selection keeps the settings whose mean next-token KL on neutral text is at most this "
                        "many nats, then takes the best dev mean (default: no budget)")
    p.add_argument("--norm-grid", nargs="+", default=None, choices=("on", "off"),
                   help="norm preservation as a dev grid dimension of every steering method, e.g. --norm-grid on off")
    p.add_argument("--grid-extensions", type=int, default=None,
                   help="how many times a grid grows past its edge while the choice sits there (default 2)")
    p.add_argument("--layer-grid", dest="layers", type=int, nargs="+", default=None,
                   help="choose every steering method's layer on dev from these, e.g. --layer-grid 10 14 18 22 "
                        "(default: every method at --layer)")
    p.add_argument("--search", default=None, choices=("grid", "halving"),
                   help="dev search: every setting on the whole dev set (grid, default), or every setting on a dev "
                        "subset and the best --halving-keep again on the whole dev set (halving)")
    p.add_argument("--halving-fraction", dest="halving_fraction", type=float, default=None,
                   help="the share of each dev task's questions in the halving search's first stage (default 0.25)")
    p.add_argument("--halving-keep", dest="halving_keep", type=int, default=None,
                   help="settings the halving search re-scores on the whole dev set (default 2)")
    p.add_argument("--temperatures", type=float, nargs="+", default=None,
                   help="the temperature controls' dev grid (default 1 1.5 2 3 4 6 8 12 16)")
    p.add_argument("--add", nargs="+", default=None, metavar="METHOD",
                   help="add these methods to the finished comparison in the results folder (same settings, same "
                        "dev rule, intervals recomputed) instead of running it all, e.g. --reference --add "
                        "temperature temperature_len")
    p.add_argument("--settings-from", dest="settings_from", default=None, metavar="EVAL_JSON",
                   help="borrow every choice that finished comparison made on dev (under this run's protocol) "
                        "instead of searching dev, e.g. results/reference/eval.json")
    _add_dtype_arg(p)
    _add_source_args(p)
    p.set_defaults(func=_command("cmd_compare"))

    p = _add_generation_run_parser(sub, "toxicity", "generation toxicity: every method of a finished comparison "
                                   "continues ToxiGen-style hateful lists; a ToxiGen classifier scores them", "prompts",
                                   165)
    p.set_defaults(func=_command("cmd_toxicity"))

    p = _add_generation_run_parser(sub, "truthfulqa-generation", "TruthfulQA open-ended answers (the paper's Fig. 5) "
                                   "by every method of a finished comparison: BLEU and ROUGE-L accuracy", "questions",
                                   408)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=50)
    p.add_argument("--prompt-format", dest="prompt_format", default="chat", choices=("chat", "qa"),
                   help="chat: the question in the chat template (default); qa: 'Q: ... A:', the MC scorer's text")
    p.set_defaults(func=_command("cmd_truthfulqa_generation"))

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
    p.add_argument("--positions", default="prompt", choices=("prompt", "all", "generated", "last", "random"),
                   help="tokens to steer while scoring (the paper: the prompt; generated: the answer tokens only)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--allow-model-mismatch", action="store_true")
    _add_source_args(p)
    p.set_defaults(func=_command("cmd_eval"))

    p = sub.add_parser("ablate", help="ablations and analyses: " + ", ".join(ABLATIONS))
    p.add_argument("names", nargs="+", choices=ABLATIONS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--from-eval", dest="from_eval", default="results/eval.json",
                   help="eval.json whose dev-chosen MAT-Steer setting to use, or none for the defaults")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers for the layer sweep")
    p.add_argument("--full", action="store_true", help="whole training and test splits (slow)")
    p.add_argument("--protocol", default=None, choices=("prompt", "all", "generated"),
                   help="start from the --from-eval comparison's choice under this protocol alone (e.g. prompt, the "
                        "paper's: steer the query)")
    p.add_argument("--out", default="results/ablations")
    p.set_defaults(func=_command("cmd_ablate"))

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
    p.set_defaults(func=_command("cmd_winrates"))

    p = sub.add_parser("demo", help="the main job on the embedded default model (make demo)")
    p.add_argument("--full", action="store_true", help="whole training/dev splits instead of the quick subsets")
    p.set_defaults(func=_command("cmd_demo"))

    _add_export_parser(sub)
    _add_harness_parser(sub)
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
