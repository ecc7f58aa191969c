"""Throughput of steered vs unsteered batched greedy ``generate``.

Runs the same left-padded prompts through ``model.generate`` and through :func:`matsteer.steering.session.steer`
(a random steerer; the values do not matter for speed), alternating the two in each repeat, and reports tokens/s
and the median per-repeat ratio steered/unsteered (target >= 0.95). Both run in ``--dtype`` ("auto": bfloat16 on
CPUs with native bf16, else float32). ``--compare-dtypes`` also generates the same prompts unsteered in float32 and
in bfloat16 (the same weights) and reports their greedy-token agreement: the fraction of generated tokens identical
position by position up to each row's first divergence, and how many whole continuations are identical.

    python benchmarks/bench_generate.py                      # default model (smollm2-135m-instruct)
    python benchmarks/bench_generate.py --tiny --json out.json  # tiny random Llama, no model files needed
    python benchmarks/bench_generate.py --compare-dtypes --json results/bench/generate.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import DTYPE_CHOICES, dtype_name, machine_fields  # noqa: E402

from matsteer.activations.models import load_model, model_device, resolve_dtype
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.steering.session import steer

PROMPTS = [
    "What is the capital of France?",
    "Explain why the sky is blue in one sentence.",
    "Write a short poem about the sea.",
    "What happens if you eat watermelon seeds?",
    "Give me three tips for learning to cook.",
    "Who wrote Pride and Prejudice?",
    "Describe a cat to someone who has never seen one.",
    "Is it safe to swim right after eating?",
]


def tiny_model(seed: int = 0) -> tuple[torch.nn.Module, None]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval(), None


def make_inputs(tokenizer: Any, n: int, vocab: int) -> dict[str, torch.Tensor]:
    """``n`` left-padded prompts of different lengths (tokenized, or random ids for the tiny model)."""
    if tokenizer is not None:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    g = torch.Generator().manual_seed(0)
    lengths = [8 + (i * 3) % 9 for i in range(n)]
    width = max(lengths)
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, width - length :] = torch.randint(3, vocab, (length,), generator=g)
        mask[i, width - length :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def greedy_agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Agreement of two ``[n, new_tokens]`` greedy continuations of the same prompts: per row, the tokens identical
    position by position until the first divergence (the rest is conditioned on different text, so not counted)."""
    same = (a == b).long()
    prefix = same.cumprod(dim=1).sum(dim=1)  # matching tokens before the first difference, per row
    n, width = a.shape
    return {
        "rows": int(n),
        "new_tokens": int(width),
        "prefix_agreement": float(prefix.sum()) / max(1, n * width),
        "identical_sequences": int((prefix == width).sum()),
        "first_divergence": [int(p) if p < width else None for p in prefix.tolist()],
    }


def bench_model(args: argparse.Namespace) -> tuple[Any, Any, str, torch.device, dict[str, torch.Tensor]]:
    """The benchmark's model (``--tiny`` or ``--model`` at ``--dtype``), tokenizer, name, device and ``--prompts``
    left-padded inputs on that device; ``--threads`` set first."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        model, tokenizer = tiny_model()
        model.to(resolve_dtype(args.dtype, args.device))
        name = "tiny-random-llama"
    else:
        loaded = load_model(args.model, dtype=args.dtype, progress=False)
        model, tokenizer, name = loaded.model, loaded.tokenizer, args.model
    device = torch.device(args.device) if args.device else model_device(model)
    model.to(device)
    inputs = {k: v.to(device) for k, v in make_inputs(tokenizer, args.prompts, model.config.vocab_size).items()}
    return model, tokenizer, name, device, inputs


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_alternately(first: Any, second: Any, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` calls of each, after one warm-up call of each; which goes first alternates, so that
    drift (thermal, caches) does not favour one side."""
    first(), second()
    times: dict[Any, list[float]] = {first: [], second: []}
    for i in range(repeats):
        for fn in ((first, second) if i % 2 == 0 else (second, first)):
            times[fn].append(timed(fn))
    return times[first], times[second]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --model")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--component", default="attn_heads", choices=["residual", "attn_output", "attn_heads"])
    ap.add_argument("--attributes", type=int, default=3)
    ap.add_argument("--positions", default="all")
    ap.add_argument("--record", action="store_true", help="also record gates (slower path)")
    ap.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="steered and unsteered alike")
    ap.add_argument("--compare-dtypes", action="store_true",
                    help="also report float32 vs bfloat16 greedy-token agreement (unsteered)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = ap.parse_args(argv)

    model, tokenizer, name, device, inputs = bench_model(args)
    dtype = next(model.parameters()).dtype
    n_layers = int(model.config.num_hidden_layers)
    layer = args.layer if args.layer is not None else n_layers // 2
    d = int(model.config.hidden_size)  # all three sites are hidden_size wide for Llama-style models
    steerer = Steerer([f"attr{i}" for i in range(args.attributes)], d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steerer.theta.mul_(0.05)
    steerer.to(device)
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else 0
    gen_kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      pad_token_id=pad)
    tokens = args.prompts * args.new_tokens

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        t_build = time.perf_counter()
        with steer(model, steerer, site=Site(layer, args.component), positions=args.positions,
                   record=args.record) as s:
            build_s = time.perf_counter() - t_build

            def run_plain() -> None:
                model.generate(**inputs, **gen_kwargs)
                sync()

            def run_steered() -> None:
                s.generate(**inputs, **gen_kwargs)
                sync()

            plain_s, steered_s = time_alternately(run_plain, run_steered, args.repeats)

    ratios = [p / q for p, q in zip(plain_s, steered_s)]  # steered tok/s over unsteered tok/s
    agreement = None
    if args.compare_dtypes:
        gens = {}
        for other in (torch.float32, torch.bfloat16):
            if other == dtype:
                m = model
            elif args.tiny:
                m = tiny_model()[0].to(device=device, dtype=other)  # the same seed: the same float32 weights
            else:
                m = load_model(args.model, dtype=dtype_name(other), progress=False).model.to(device)
            with torch.no_grad():
                out = m.generate(**inputs, **gen_kwargs)
            gens[dtype_name(other)] = out[:, inputs["input_ids"].shape[1]:].cpu()
            del m
        agreement = {"model": name, "dtypes": ["float32", "bfloat16"], "steered": False,
                     **greedy_agreement(gens["bfloat16"], gens["float32"]), **machine_fields()}
    result = {
        "model": name,
        **machine_fields(dtype),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "site": {"layer": layer, "component": args.component},
        "attributes": args.attributes,
        "positions": args.positions,
        "record": args.record,
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "build_s": build_s,
        "unsteered_tok_s": [tokens / t for t in plain_s],
        "steered_tok_s": [tokens / t for t in steered_s],
        "median_unsteered_tok_s": tokens / statistics.median(plain_s),
        "median_steered_tok_s": tokens / statistics.median(steered_s),
        "median_ratio": statistics.median(ratios),
        "target_ratio": 0.95,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    result["meets_target"] = result["median_ratio"] >= result["target_ratio"]
    if agreement is not None:
        result["dtype_agreement"] = agreement
    print(
        f"{name} on {result['device']} ({result['threads']} threads, {result['dtype']}), {args.prompts} prompts x "
        f"{args.new_tokens} new tokens, site {layer}/{args.component}, T={args.attributes}\n"
        f"  unsteered {result['median_unsteered_tok_s']:.1f} tok/s   steered {result['median_steered_tok_s']:.1f} tok/s"
        f"   median ratio {result['median_ratio']:.3f} (target >= 0.95)   build {build_s * 1e3:.1f} ms"
    )
    if agreement is not None:
        print(f"  float32 vs bfloat16 greedy (unsteered): {agreement['prefix_agreement']:.1%} of tokens agree up to "
              f"the first divergence; {agreement['identical_sequences']}/{agreement['rows']} continuations identical")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
