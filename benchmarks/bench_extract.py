"""Extraction throughput: matsteer's early-exit, length-sorted batches vs two baselines, on the same texts, in one run.

(a) a plain batched forward of the full model with ``output_hidden_states=True`` (what most scripts do);
(a') the same, with batches sorted by length as ours are (isolates what early exit alone buys);
(b) the reference code's approach: one text at a time, every layer's hidden states collected.
Prints tokens/s (real tokens, pads not counted) and the ratios; ``--json OUT`` saves them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from matsteer.data import load_examples
from matsteer.extract import extract
from matsteer.models import load_model
from matsteer.sites import Site


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(progress=False)
    model, tok = loaded.model, loaded.tokenizer
    texts = [e.text for e in load_examples("truthfulqa", "train")[: args.texts]]
    n_tokens = sum(len(ids) for ids in tok(texts)["input_ids"])
    site = Site(args.layer, "residual")

    def ours() -> None:
        extract(model, tok, texts, site, tokens="all", batch_size=args.batch_size, progress=False)

    def plain_batched(order: list[str]) -> None:
        tok.padding_side = "left"
        with torch.inference_mode():
            for i in range(0, len(order), args.batch_size):
                enc = tok(order[i:i + args.batch_size], return_tensors="pt", padding=True)
                out = model(**enc, output_hidden_states=True, use_cache=False)
                _ = out.hidden_states[args.layer + 1][enc["attention_mask"].bool()]

    def reference_style() -> None:
        with torch.inference_mode():
            for text in texts:
                enc = tok(text, return_tensors="pt")
                out = model(**enc, output_hidden_states=True)
                _ = torch.stack(out.hidden_states, dim=0).squeeze(1).numpy()

    ours()  # warm-up (allocator, lazy inits)
    by_length = sorted(texts, key=lambda t: len(tok(t)["input_ids"]))
    t_ours = _timed(ours)
    t_plain = _timed(lambda: plain_batched(texts))
    t_sorted = _timed(lambda: plain_batched(by_length))
    t_ref = _timed(reference_style)
    res = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": loaded.name, "texts": len(texts), "tokens": n_tokens, "layer": args.layer,
        "tokens_per_s": {"matsteer_extract": n_tokens / t_ours, "plain_batched_hidden_states": n_tokens / t_plain,
                         "plain_batched_length_sorted": n_tokens / t_sorted,
                         "reference_one_by_one_all_layers": n_tokens / t_ref},
        "ratio_vs_plain_batched": t_plain / t_ours, "ratio_vs_reference": t_ref / t_ours,
        # The same batches as ours, full model: isolates what early exit alone buys.
        "ratio_vs_plain_batched_length_sorted": t_sorted / t_ours,
        "targets": {"vs_plain_batched": 1.7, "vs_reference": 10.0},
    }
    for k, v in res["tokens_per_s"].items():
        print(f"{k:34s} {v:9.0f} tok/s")
    print(f"ratio vs (a) plain batched forward : {res['ratio_vs_plain_batched']:.2f}x (target >= 1.7x)")
    print(f"ratio vs (a') plain, length-sorted : {res['ratio_vs_plain_batched_length_sorted']:.2f}x (early exit alone)")
    print(f"ratio vs (b) reference one-by-one  : {res['ratio_vs_reference']:.2f}x (target >= 10x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
