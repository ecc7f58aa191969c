"""K steering settings in one batched pass (per-row settings) vs K separate passes, measured in the same run.

A multiplier sweep over K values: the same left-padded prompts repeated K times, row block k steered with
``row_multipliers`` = the k-th multiplier (one ``steer(...)`` forward of K x prompts rows), against K forwards of the
prompts alone with ``settings.multipliers`` set to each value in turn. The two alternate in each repeat; the report
gives seconds per sweep and the median per-repeat speedup separate/batched (> 1: the batched pass is faster), and
how far the batched logits are from the separate ones (the batch shape changes the matmul blocking, so they agree
to rounding, not bit for bit). ``--new-tokens N`` times greedy ``generate`` instead of one forward.

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
from matsteer.steering.session import steer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --model")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per setting")
    ap.add_argument("--multipliers", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                    help="the K settings: multipliers of the first attribute")
    ap.add_argument("--new-tokens", type=int, default=0, help="0: one forward; N > 0: greedy generate N tokens")
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
    print(
        f"{name} on {result['device']} ({result['threads']} threads, {result['dtype']}), K={k_settings} settings x "
        f"{args.prompts} prompts, {result['mode']}, site {layer}/{args.component}, T={args.attributes}\n"
        f"  one batched pass {result['median_batched_s'] * 1e3:.1f} ms   K separate passes "
        f"{result['median_separate_s'] * 1e3:.1f} ms   median speedup {result['median_speedup']:.2f}x   {agreement}"
    )
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
