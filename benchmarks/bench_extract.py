"""Extraction throughput: matsteer's early-exit, length-sorted batches vs two baselines, on the same texts, in one run.

(a) a plain batched forward of the full model with ``output_hidden_states=True`` (what most scripts do), in the
    same dtype as ours;
(a') the same, with batches sorted by length as ours are (isolates what early exit alone buys);
(b) the reference code's approach: one text at a time, every layer's hidden states collected, always in float32
    (how the reference code runs on a CPU).
Ours runs in ``--dtype`` ("auto": bfloat16 on CPUs with native bf16, else float32). ``--compare-dtypes`` also
runs ours in the other of float32 / bfloat16 on the same texts: both tokens/s, and the relative error
``||a_bf16 - a_f32|| / ||a_f32||`` of the extracted activations. Prints tokens/s (real tokens, pads not counted)
and the ratios; ``--json OUT`` saves them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import DTYPE_CHOICES, dtype_name, machine_fields  # noqa: E402

from matsteer.activations.extraction import extract_activations
from matsteer.activations.models import LoadedModel, load_model
from matsteer.activations.sites import Site
from matsteer.data import load_examples


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                    help="ours and (a)/(a'); the reference approach (b) is always float32")
    ap.add_argument("--compare-dtypes", action="store_true",
                    help="also run ours in the other of float32/bfloat16: tok/s and activation relative error")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model(dtype=args.dtype, progress=False)
    dtype = dtype_name(loaded.dtype)
    models: dict[str, LoadedModel] = {dtype: loaded}
    for extra in ("float32", "bfloat16") if args.compare_dtypes else ("float32",):
        if extra not in models:  # the same weights in another dtype (float32 for the reference approach)
            models[extra] = load_model(dtype=extra, progress=False)
    tok = loaded.tokenizer
    texts = [e.text for e in load_examples("truthfulqa", "train")[: args.texts]]
    n_tokens = sum(len(ids) for ids in tok(texts)["input_ids"])
    site = Site(args.layer, "residual")
    rows: dict[str, torch.Tensor] = {}

    def ours(name: str) -> None:
        m = models[name]
        rows[name] = extract_activations(m.model, m.tokenizer, texts, site, tokens="all", batch_size=args.batch_size,
                             progress=False).activations

    def plain_batched(order: list[str]) -> None:
        model, tok_ = loaded.model, loaded.tokenizer
        tok_.padding_side = "left"
        with torch.inference_mode():
            for i in range(0, len(order), args.batch_size):
                enc = tok_(order[i:i + args.batch_size], return_tensors="pt", padding=True)
                out = model(**enc, output_hidden_states=True, use_cache=False)
                _ = out.hidden_states[args.layer + 1][enc["attention_mask"].bool()]

    def reference_style() -> None:
        ref = models["float32"]
        with torch.inference_mode():
            for text in texts:
                enc = ref.tokenizer(text, return_tensors="pt")
                out = ref.model(**enc, output_hidden_states=True)
                _ = torch.stack(out.hidden_states, dim=0).squeeze(1).float().numpy()

    for name in models:
        ours(name)  # warm-up of every model (allocator, lazy inits, this dtype's kernels)
    by_length = sorted(texts, key=lambda t: len(tok(t)["input_ids"]))
    t_ours = _timed(lambda: ours(dtype))
    t_plain = _timed(lambda: plain_batched(texts))
    t_sorted = _timed(lambda: plain_batched(by_length))
    t_ref = _timed(reference_style)
    t_other = {name: _timed(lambda n=name: ours(n)) for name in models if name != dtype and args.compare_dtypes}
    res = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        **machine_fields(dtype),
        "model": loaded.name, "texts": len(texts), "tokens": n_tokens, "layer": args.layer,
        # (b) always runs in float32; ours and (a)/(a') in `dtype`.
        "dtypes": {"matsteer_extract": dtype, "plain_batched": dtype, "reference": "float32"},
        "reference_dtype": "float32",
        "tokens_per_s": {"matsteer_extract": n_tokens / t_ours, "plain_batched_hidden_states": n_tokens / t_plain,
                         "plain_batched_length_sorted": n_tokens / t_sorted,
                         "reference_one_by_one_all_layers": n_tokens / t_ref},
        "ratio_vs_plain_batched": t_plain / t_ours, "ratio_vs_reference": t_ref / t_ours,
        # The same batches as ours, full model: isolates what early exit alone buys.
        "ratio_vs_plain_batched_length_sorted": t_sorted / t_ours,
        "targets": {"vs_plain_batched": 1.7, "vs_reference": 10.0},
    }
    if args.compare_dtypes:
        times = {dtype: t_ours, **t_other}
        a16, a32 = rows["bfloat16"].double(), rows["float32"].double()
        per_row = (a16 - a32).norm(dim=1) / a32.norm(dim=1).clamp_min(1e-12)
        res["dtype_compare"] = {
            "layer": args.layer, "rows": int(a32.shape[0]),
            "tokens_per_s": {name: n_tokens / t for name, t in times.items()},
            # > 1: bfloat16 extraction is faster than float32 on this machine.
            "bf16_speedup_vs_float32": times["float32"] / times["bfloat16"],
            # ||a_bf16 - a_f32||_F / ||a_f32||_F over all extracted rows (same texts, same layer).
            "activation_rel_error": float((a16 - a32).norm() / a32.norm()),
            "activation_rel_error_max_row": float(per_row.max()),
        }
    for k, v in res["tokens_per_s"].items():
        run_dtype = "float32" if k.startswith("reference") else dtype
        print(f"{k:34s} {v:9.0f} tok/s  ({run_dtype})")
    print(f"ratio vs (a) plain batched forward : {res['ratio_vs_plain_batched']:.2f}x (target >= 1.7x)")
    print(f"ratio vs (a') plain, length-sorted : {res['ratio_vs_plain_batched_length_sorted']:.2f}x (early exit alone)")
    print(f"ratio vs (b) reference one-by-one  : {res['ratio_vs_reference']:.2f}x (target >= 10x; (b) in float32)")
    if args.compare_dtypes:
        c = res["dtype_compare"]
        print(f"matsteer_extract float32 {c['tokens_per_s']['float32']:.0f} tok/s, bfloat16 "
              f"{c['tokens_per_s']['bfloat16']:.0f} tok/s: bf16 {c['bf16_speedup_vs_float32']:.2f}x float32; "
              f"activation rel. error (L{args.layer}) {c['activation_rel_error']:.2e} "
              f"(worst row {c['activation_rel_error_max_row']:.2e})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
