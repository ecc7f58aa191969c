"""K steering settings in one batched pass (per-row settings) vs K separate passes, measured in the same run.

A multiplier sweep over K values: the same left-padded prompts repeated K times, row block k steered with
``row_multipliers`` = the k-th multiplier (one ``steer(...)`` forward of K x prompts rows), against K forwards of the
prompts alone with ``settings.multipliers`` set to each value in turn. The two alternate in each repeat; the report
gives seconds per sweep and the median per-repeat speedup separate/batched (> 1: the batched pass is faster), and
how far the batched logits are from the separate ones (the batch shape changes the matmul blocking, so they agree
to rounding, not bit for bit). ``--new-tokens N`` times greedy ``generate`` instead of one forward.

A second row, ``cached``, times the cached scorer the evaluation uses (``matsteer.eval.cached_scoring``): the same K
settings over ``--cached-questions`` TruthfulQA dev questions (random activations and ids for ``--tiny``) cached at
the residual stream of the same layer, ``score_cached_settings`` (one pass per batch, K copies of each batch)
against K ``score_cached`` calls, with the largest difference of their summed log-probs (0 where the batches are
large enough that K copies round as one does). ``--cached-questions 0`` leaves it out.

    python benchmarks/bench_row_settings.py                       # default model (smollm2-135m-instruct)
    python benchmarks/bench_row_settings.py --tiny --json out.json  # tiny random Llama, no model files needed
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import bench_model, time_alternately  # noqa: E402
from benchinfo import DTYPE_CHOICES, machine_fields  # noqa: E402

from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.eval.cached_scoring import score_cached, score_cached_settings, steering_edit
from matsteer.eval.site_cache import CachedQuestion, cache_questions, supports_upper_pass
from matsteer.steering.session import steer


def cached_questions(model: Any, tokenizer: Any, site: Site, n: int) -> list[CachedQuestion]:
    """``n`` questions cached at ``site``: TruthfulQA dev questions through the model's lower layers, or (no
    tokenizer: the tiny model) random activations ``[P, d]`` / ``[K, W, d]`` and ids of TruthfulQA-like sizes (the
    upper pass costs the same whatever the activations are)."""
    if tokenizer is not None:
        from matsteer.data import load_mc_questions

        questions = load_mc_questions("truthfulqa", "dev", limit=n)
        return cache_questions(model, tokenizer, questions, site, progress=False)
    g = torch.Generator().manual_seed(0)
    d, vocab = int(model.config.hidden_size), int(model.config.vocab_size)
    out = []
    for i in range(n):
        p, k, w = 12 + (i * 5) % 17, 2 + i % 5, 3 + (i * 3) % 8
        mask = torch.zeros(k, w, dtype=torch.long)
        for r in range(k):
            mask[r, : 1 + (r + i) % w] = 1
        out.append(CachedQuestion(torch.randn(p, d, generator=g), torch.randint(3, vocab, (p,), generator=g),
                                  torch.randn(k, w, d, generator=g) * mask[..., None],
                                  torch.randint(3, vocab, (k, w), generator=g) * mask, mask))
    return out


def bench_cached(model: Any, tokenizer: Any, steerer: Steerer, layer: int, settings: list[dict[str, Any]],
                 questions: int, repeats: int, sync: Any) -> dict[str, Any]:
    """The cached scorer's row: K settings in one ``score_cached_settings`` pass vs K ``score_cached`` passes."""
    site = Site(layer, "residual")
    if not supports_upper_pass(model, site):
        return {"skipped": f"cached scoring needs a Llama-style model ({getattr(model.config, 'model_type', '?')})"}
    cached = cached_questions(model, tokenizer, site, questions)
    whole = [{"multipliers": s} for s in settings]
    edits = [steering_edit(steerer, steerer.scale_vector(s)) for s in settings]
    outs: dict[str, list[list[torch.Tensor]]] = {}

    def run_batched() -> None:
        outs["batched"] = score_cached_settings(model, site, cached, steerer, whole)
        sync()

    def run_separate() -> None:
        outs["separate"] = [score_cached(model, site, cached, e) for e in edits]
        sync()

    batched_s, separate_s = time_alternately(run_batched, run_separate, repeats)
    diff = max(float((a.float() - b.float()).abs().max())
               for per_b, per_s in zip(outs["batched"], outs["separate"]) for a, b in zip(per_b, per_s))
    ratios = [s / b for s, b in zip(separate_s, batched_s)]
    return {"mode": "cached scoring", "site": {"layer": layer, "component": "residual"}, "settings": len(settings),
            "questions": len(cached), "answers": sum(int(c.answer_ids.shape[0]) for c in cached),
            "repeats": repeats, "batched_s": batched_s, "separate_s": separate_s,
            "median_batched_s": statistics.median(batched_s), "median_separate_s": statistics.median(separate_s),
            "median_speedup": statistics.median(ratios), "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --model")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per setting")
    ap.add_argument("--multipliers", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                    help="the K settings: multipliers of the first attribute")
    ap.add_argument("--new-tokens", type=int, default=0, help="0: one forward; N > 0: greedy generate N tokens")
    ap.add_argument("--cached-questions", type=int, default=16,
                    help="questions of the cached scorer's row (0: leave the row out)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--component", default="attn_heads", choices=["residual", "attn_output", "attn_heads"])
    ap.add_argument("--attributes", type=int, default=3)
    ap.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = ap.parse_args(argv)

    model, tokenizer, name, device, inputs = bench_model(args)
    dtype = next(model.parameters()).dtype
    k_settings = len(args.multipliers)
    # The sweep as one batch: the prompts repeated once per setting, row block k under setting k.
    batched_inputs = {k: v.repeat(k_settings, 1) for k, v in inputs.items()}
    layer = args.layer if args.layer is not None else int(model.config.num_hidden_layers) // 2
    d = int(model.config.hidden_size)
    attrs = [f"attr{i}" for i in range(args.attributes)]
    steerer = Steerer(attrs, d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steerer.theta.mul_(0.05)
    steerer.to(device)
    settings = [{attrs[0]: m} for m in args.multipliers]
    rows = [s for s in settings for _ in range(args.prompts)]
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else 0
    gen_kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      pad_token_id=pad)
    site = Site(layer, args.component)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def call(handle: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if args.new_tokens:
            return handle.generate(**batch, **gen_kwargs)
        return handle(**batch).logits

    with torch.no_grad(), steer(model, steerer, site=site, row_multipliers=rows) as together, \
            steer(model, steerer, site=site) as one:
        outs: dict[str, Any] = {}

        def run_batched() -> None:
            outs["batched"] = call(together, batched_inputs)
            sync()

        def run_separate() -> None:
            parts = []
            for s in settings:
                one.settings.multipliers = dict(s)
                parts.append(call(one, inputs))
            outs["separate"] = torch.cat(parts)
            sync()

        batched_s, separate_s = time_alternately(run_batched, run_separate, args.repeats)
    batched, separate = outs["batched"], outs["separate"]
    agreement: dict[str, Any]
    if args.new_tokens:
        agreement = {"identical_sequences": int((batched == separate).all(dim=1).sum()),
                     "rows": int(batched.shape[0])}
    else:
        mask = batched_inputs["attention_mask"].bool()
        diff = (batched.float() - separate.float()).abs()[mask]
        agreement = {"max_abs_logit_diff": float(diff.max()),
                     "argmax_agreement": float((batched.argmax(-1) == separate.argmax(-1))[mask].float().mean())}
    ratios = [s / b for s, b in zip(separate_s, batched_s)]
    result = {
        "model": name,
        **machine_fields(dtype),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "python": platform.python_version(),
        "site": {"layer": layer, "component": args.component},
        "attributes": args.attributes,
        "settings": k_settings,
        "multipliers": args.multipliers,
        "prompts": args.prompts,
        "mode": f"generate {args.new_tokens} tokens" if args.new_tokens else "forward",
        "repeats": args.repeats,
        "batched_s": batched_s,
        "separate_s": separate_s,
        "median_batched_s": statistics.median(batched_s),
        "median_separate_s": statistics.median(separate_s),
        "median_speedup": statistics.median(ratios),
        **agreement,
    }
    if args.cached_questions > 0:
        result["cached"] = bench_cached(model, tokenizer, steerer, layer, settings, args.cached_questions,
                                        args.repeats, sync)
    print(
        f"{name} on {result['device']} ({result['threads']} threads, {result['dtype']}), K={k_settings} settings x "
        f"{args.prompts} prompts, {result['mode']}, site {layer}/{args.component}, T={args.attributes}\n"
        f"  one batched pass {result['median_batched_s'] * 1e3:.1f} ms   K separate passes "
        f"{result['median_separate_s'] * 1e3:.1f} ms   median speedup {result['median_speedup']:.2f}x   {agreement}"
    )
    c = result.get("cached")
    if c and "skipped" not in c:
        print(f"  cached scorer, {c['questions']} questions ({c['answers']} answers) at {layer}/residual: one pass "
              f"{c['median_batched_s'] * 1e3:.1f} ms   K passes {c['median_separate_s'] * 1e3:.1f} ms   median "
              f"speedup {c['median_speedup']:.2f}x   max |diff| {c['max_abs_diff']:.2g}")
    elif c:
        print(f"  cached scorer: skipped ({c['skipped']})")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
