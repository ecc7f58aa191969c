"""GPU agreement check: extraction, training, steered generation and MC scoring on CUDA vs the CPU float32 result.

For each model (the embedded default ``smollm2-135m-instruct`` and a tiny random Llama built here) the whole path
runs once on the CPU in float32 (the reference) and then on ``--device`` in each of ``--dtypes``:

- extraction (``matsteer.activations.features.extract_to_folder``; TruthfulQA + ToxiGen train texts, answer tokens): relative
  Frobenius error of the activation rows ``[M, d]``;
- training (``matsteer.core.training.train`` on the *reference* rows, so only the device differs; training is float32 on
  any device): relative error of θ, W, b and of the final total loss;
- steered generation (``matsteer.steering.session.steer`` + greedy ``generate``, the reference steerer): at every
  step of the reference continuation (teacher forced), the device's greedy token must be within ``margin`` nats
  of the reference model's best log-prob (agreement up to near-ties, which low precision may flip); the plain
  token agreement is printed too;
- MC scoring (``matsteer.eval.scoring.score_mc`` on TruthfulQA dev questions, unsteered and steered): relative error
  of each choice's summed log-prob; the MC1 choice agreement is printed too.

Tolerances (below, scaled by ``--tolerance-scale``) are printed with every check. Exit 0 if all agree, 1 on any
disagreement, 2 if the check cannot run (no CUDA, default model missing). Usage::

    python benchmarks/gpu_check.py --json results/gpu_check.json              # CUDA: both models, fp16 + bf16
    python benchmarks/gpu_check.py --device cpu --tiny-only --json out.json   # no GPU: CPU fp32 vs CPU bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matsteer.activations.features import FeatureSet, extract_to_folder
from matsteer.activations.models import DEFAULT_MODEL, LoadedModel, load_model, weight_fingerprint
from matsteer.activations.sites import Site
from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.steerer import Steerer
from matsteer.core.training import TrainResult, train_steerer
from matsteer.data import load_examples, load_mc_questions
from matsteer.errors import MatSteerError
from matsteer.eval.scoring import score_mc
from matsteer.steering.session import steer

# Tolerances per model dtype: about 20-40 unit roundoffs (float16 u = 4.9e-4, bfloat16 u = 3.9e-3); measured on
# CPU (fp16 / bf16 vs fp32): extraction 2.5e-3 / 1.9e-2 (default model), 4.5e-3 / 2.5e-2 (tiny); scoring
# 2.4e-3 / 1.7e-2; generation margin 0 / 0.06 nats. Bugs (a wrong mask, positions or site) give errors of order 1.
# Training runs in float32 on any device, so its tolerance does not depend on the dtype: only on reduction order
# (and on Adam's normalised steps, which turn round-off into whole-lr steps).
TOLERANCES: dict[str, dict[str, float]] = {
    "extract_rel": {"float32": 1e-4, "float16": 2e-2, "bfloat16": 8e-2},
    "train_rel": {"float32": 1e-2, "float16": 1e-2, "bfloat16": 1e-2},
    "generate_margin_nats": {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.5},
    "score_rel": {"float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2},
}
PROMPTS = ("What happens if you eat watermelon seeds?", "Write one sentence about immigrants.",
           "Who is more likely to be bad at technology, an old man or a young man?")
DATASETS = {"truthfulqa": 3, "toxigen": 24}  # groups per data set for extraction (train split)


# --------------------------------------------------------------------------------------------------------------
# Models


def tiny_model() -> LoadedModel:
    """A random 4-layer Llama (d = 64) with a byte-level tokenizer (any text, character offsets), seeded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): peaked next-token distributions, so that numerical differences show in
    # the generation and scoring checks instead of vanishing in near-uniform log-probs.
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model, tokenizer, "tiny-llama", weight_fingerprint(model))


def on(loaded: LoadedModel, device: str, dtype: str) -> LoadedModel:
    """A copy of ``loaded`` on ``device`` in ``dtype`` (the same weights, cast)."""
    model = copy.deepcopy(loaded.model).to(device=device, dtype=getattr(torch, dtype)).eval()
    return LoadedModel(model, loaded.tokenizer, loaded.name, loaded.weight_hash)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------------------
# The four stages; each returns what the comparison needs


def extract_stage(loaded: LoadedModel, site: Site, work: Path) -> dict[str, FeatureSet]:
    """Feature sets per data set: activations ``[M, d]`` float32 (answer tokens)."""
    out = {}
    for name, limit in DATASETS.items():
        examples = load_examples(name, "train", limit=limit)
        out[name] = extract_to_folder(loaded, examples, site, work / name, tokens="answer", dataset=name,
                                      split="train", batch_size=8, progress=False)
    return out


def train_stage(features: dict[str, FeatureSet], device: str, epochs: int) -> TrainResult:
    data = [AttributeData(fs.attribute, fs.positives, fs.negatives, fs.positive_side) for fs in features.values()]
    smallest = min(min(a.positives.shape[0], a.negatives.shape[0]) for a in data)
    if smallest < 2:
        raise MatSteerError(f"Too few rows on one side ({smallest}) to train; raise the extraction limits.")
    config = TrainConfig(epochs=epochs, sigma="median", batch_per_side=min(16, smallest), seed=0, device=device)
    return train_steerer(data, config, progress=False)


def _prompt_ids(loaded: LoadedModel, prompt: str, device: str) -> torch.Tensor:
    """``[1, n]`` ids: the chat template where the tokenizer has one, else the raw prompt."""
    tok = loaded.tokenizer
    if getattr(tok, "chat_template", None):
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"].to(device)


def generate_stage(loaded: LoadedModel, steerer: Steerer, site: Site, new_tokens: int, device: str,
                   reference: list[torch.Tensor] | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy steered continuations (one prompt at a time, so no padding), ``[new]`` ids each, and the steered
    log-probs ``[new, V]`` at each step of the reference continuation (teacher forced; this run's own if None)."""
    steerer = copy.deepcopy(steerer)  # steer() moves it to the model's device
    gens, logps = [], []
    pad = loaded.tokenizer.pad_token_id
    with torch.inference_mode(), steer(loaded.model, steerer, site=site, global_multiplier=4.0) as handle:
        for i, prompt in enumerate(PROMPTS):
            ids = _prompt_ids(loaded, prompt, device)
            out = handle.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
            gen = out[0, ids.shape[1]:].cpu()
            gens.append(gen)
            forced = torch.cat([ids[0].cpu(), (reference[i] if reference is not None else gen)]).unsqueeze(0).to(device)
            logits = handle(input_ids=forced, attention_mask=torch.ones_like(forced)).logits[0].float()
            n = ids.shape[1]
            logps.append(torch.log_softmax(logits[n - 1: forced.shape[1] - 1], -1).cpu())  # predicts each new token
    return gens, logps


def score_stage(loaded: LoadedModel, steerer: Steerer, site: Site, questions: list[Any]) -> dict[str, list[torch.Tensor]]:
    """Summed log-prob per choice ``[K_q]`` per question, unsteered and steered (prompt tokens, as the paper)."""
    plain = score_mc(loaded.model, loaded.tokenizer, questions, progress=False)
    with torch.inference_mode(), steer(loaded.model, copy.deepcopy(steerer), site=site, positions="prompt") as handle:
        steered = score_mc(loaded.model, loaded.tokenizer, questions, steering=handle, progress=False)
    return {"unsteered": plain, "steered": steered}


def run_all(loaded: LoadedModel, site: Site, args: argparse.Namespace, device: str, work: Path,
            reference: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, float]]:
    """All four stages on ``loaded`` (already on ``device``); training and steering use the reference's inputs."""
    times: dict[str, float] = {}
    features, times["extract_s"] = timed(device, lambda: extract_stage(loaded, site, work))
    train_on = reference["features"] if reference is not None else features
    result, times["train_s"] = timed(device, lambda: train_stage(train_on, device, args.epochs))
    steerer = reference["result"].steerer if reference is not None else result.steerer.cpu()
    (gens, logps), times["generate_s"] = timed(device, lambda: generate_stage(
        loaded, steerer, site, args.new_tokens, device, reference["gens"] if reference is not None else None))
    questions = load_mc_questions("truthfulqa", "dev", limit=args.questions)
    scores, times["score_s"] = timed(device, lambda: score_stage(loaded, steerer, site, questions))
    return {"features": features, "result": result, "gens": gens, "logps": logps, "scores": scores}, times


# --------------------------------------------------------------------------------------------------------------
# Comparisons


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a - b‖ / ‖b‖`` in float64 (0 when both are 0)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    denom = float(b.norm())
    return float((a - b).norm()) / denom if denom > 0 else float((a - b).norm())


def compare(run: dict[str, Any], ref: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(checked metrics, informational metrics) of a run against the CPU float32 reference."""
    checked, info = {}, {}
    extract = 0.0
    for name, fs in run["features"].items():
        r = ref["features"][name]
        if fs.activations.shape != r.activations.shape:  # another tokenization or row selection: a real bug
            return {"extract_rel": float("inf")}, {"extract_rows": float(fs.activations.shape[0])}
        extract = max(extract, rel(fs.activations, r.activations))
    checked["extract_rel"] = extract
    a, b = run["result"], ref["result"]
    params = max(rel(getattr(a.steerer, k), getattr(b.steerer, k)) for k in ("theta", "gate_weight", "gate_bias"))
    losses = rel(torch.tensor(a.history.series("total")), torch.tensor(b.history.series("total")))
    checked["train_rel"] = max(params, losses)
    gaps, same, total = [], 0, 0
    for own, ref_logp in zip(run["logps"], ref["logps"]):
        picked = own.argmax(-1)  # the device's greedy token at each reference step
        gaps.append(float((ref_logp.max(-1).values - ref_logp.gather(-1, picked[:, None])[:, 0]).max()))
    for gen, ref_gen in zip(run["gens"], ref["gens"]):
        same += int((gen == ref_gen).sum())
        total += ref_gen.numel()
    checked["generate_margin_nats"] = max(gaps)
    info["generate_token_agreement"] = same / max(1, total)
    worst, agree, count = 0.0, 0, 0
    for kind in ("unsteered", "steered"):
        for s, r in zip(run["scores"][kind], ref["scores"][kind]):
            worst = max(worst, float(((s.double() - r.double()).abs() / r.double().abs().clamp_min(1.0)).max()))
            agree += int(int(s.argmax()) == int(r.argmax()))
            count += 1
    checked["score_rel"] = worst
    info["score_argmax_agreement"] = agree / max(1, count)
    return checked, info


# --------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="device to check against the CPU float32 reference")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float16", "bfloat16"), default=None,
                   help="model dtypes on --device (default: float16 bfloat16 on CUDA, bfloat16 on CPU)")
    p.add_argument("--tiny-only", action="store_true", help="skip the default model (no model files needed)")
    p.add_argument("--layer", type=int, default=14, help="residual layer for the default model (tiny: 1)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--questions", type=int, default=4, help="TruthfulQA dev questions to score")
    p.add_argument("--tolerance-scale", type=float, default=1.0, help="multiply every tolerance (0: exact)")
    p.add_argument("--json", default=None, help="write the summary here")
    return p.parse_args(argv)


def check_models(args: argparse.Namespace) -> list[tuple[str, Callable[[], LoadedModel], Site]]:
    models: list[tuple[str, Callable[[], LoadedModel], Site]] = [("tiny-llama", tiny_model, Site(1))]
    if not args.tiny_only:
        models.insert(0, (DEFAULT_MODEL, lambda: load_model(DEFAULT_MODEL, progress=False), Site(args.layer)))
    return models


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu --tiny-only for the CPU self-check.",
              file=sys.stderr)
        raise SystemExit(2)
    dtypes = args.dtypes or (["float16", "bfloat16"] if device.startswith("cuda") else ["bfloat16"])
    tolerances = {k: {d: v * args.tolerance_scale for d, v in per.items()} for k, per in TOLERANCES.items()}
    card = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.processor()
    print(f"gpu_check: {device} ({card or platform.machine()}), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, dtypes {dtypes}")
    summary: dict[str, Any] = {"device": device, "device_name": card, "torch": torch.__version__,
                               "cuda": torch.version.cuda, "dtypes": dtypes, "tolerances": tolerances,
                               "checks": [], "info": [], "timings_s": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        for label, make, site in check_models(args):
            try:
                base = make()
            except MatSteerError as exc:
                print(f"gpu_check: cannot load {label}: {exc} (use --tiny-only to skip it)", file=sys.stderr)
                raise SystemExit(2) from exc
            base.model.float().eval()
            ref, ref_times = run_all(on(base, "cpu", "float32"), site, args, "cpu", Path(tmp) / label / "ref", None)
            summary["timings_s"][label] = {"cpu-float32": ref_times}
            for dtype in dtypes:
                loaded = on(base, device, dtype)
                run, times = run_all(loaded, site, args, device, Path(tmp) / label / dtype, ref)
                summary["timings_s"][label][f"{device}-{dtype}"] = times
                checked, info = compare(run, ref)
                for metric, value in checked.items():
                    tol = tolerances[metric][dtype]
                    ok = value <= tol
                    summary["checks"].append({"model": label, "dtype": dtype, "metric": metric, "value": value,
                                              "tolerance": tol, "ok": ok})
                    print(f"  {label:<22} {dtype:<9} {metric:<21} {value:10.3g}  <= {tol:<8.3g} "
                          f"{'ok' if ok else 'DISAGREE'}")
                summary["info"].append({"model": label, "dtype": dtype, **info})
                print(f"  {label:<22} {dtype:<9} " + "  ".join(f"{k} {v:.2f}" for k, v in info.items()))
                print(f"  {label:<22} {dtype:<9} times: " + "  ".join(f"{k} {v:.2f}" for k, v in times.items())
                      + "  (CPU float32: " + "  ".join(f"{k} {v:.2f}" for k, v in ref_times.items()) + ")")
                del loaded
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    summary["wall_s"] = time.perf_counter() - start
    summary["ok"] = all(c["ok"] for c in summary["checks"])
    print(f"gpu_check: {'all agree' if summary['ok'] else 'DISAGREEMENT'} in {summary['wall_s']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
