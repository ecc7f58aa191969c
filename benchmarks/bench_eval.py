"""Scoring K methods with matsteer's evaluator vs K independent plain forward passes.

matsteer: each question's rows run once up to the steered site (shared by all methods); per method only the
layers above the site run, the prompts batched across questions and shared by their answers. Baseline: for every
method, every question's (prompt + answer) rows in one plain full forward pass, no hooks at all (the cheapest a
naive harness could do; real steering would add hook overhead). Both produce the same per-choice log-probs for the
unsteered method (checked: within 1e-3 nats in float32; in bfloat16 / float16, where the two paths round
differently, within a relative 6e-2 / 1e-2 of each summed log-prob, gpu_check.py's scoring tolerances). Both paths
run in ``--dtype`` ("auto": bfloat16 on CPUs with native bf16, else float32). Reports wall times and the ratio
baseline / matsteer.

    python benchmarks/bench_eval.py --json results/bench/eval.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import DTYPE_CHOICES, dtype_name, machine_fields  # noqa: E402

from matsteer.activations.models import load_model
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.data import load_mc_questions
from matsteer.eval.evaluator import Evaluator, Method
from matsteer.eval.scoring import prompt_and_continuations

#: The unsteered agreement check between the two paths: ("abs", nats) in float32, ("rel", fraction) in low precision.
CHECK_TOLERANCE = {"float32": ("abs", 1e-3), "bfloat16": ("rel", 6e-2), "float16": ("rel", 1e-2)}


def plain_scores(loaded, questions) -> list[torch.Tensor]:
    """Per question, one full forward of its [K, prompt + answer] rows; summed answer log-probs [K]."""
    tok, model = loaded.tokenizer, loaded.model
    out = []
    with torch.inference_mode():
        for q in questions:
            context, conts = prompt_and_continuations(q, q.choices)
            ctx = tok(context, add_special_tokens=True)["input_ids"]
            rows = [ctx + tok(c, add_special_tokens=False)["input_ids"] for c in conts]
            width = max(map(len, rows))
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            picked = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            scored = torch.zeros_like(mask[:, 1:], dtype=torch.bool)
            for r, row in enumerate(rows):
                scored[r, len(ctx) - 1: len(row) - 1] = True
            out.append((picked * scored).sum(-1))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=int, default=8, help="K: methods scored (the comparison has 8)")
    parser.add_argument("--questions", type=int, nargs=3, default=(20, 40, 30), metavar=("TQA", "TOX", "BBQ"))
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="both paths alike")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m-instruct", dtype=args.dtype, progress=False)
    dtype = dtype_name(loaded.dtype)
    site = Site(14)
    limits = dict(zip(("truthfulqa", "toxigen", "bbq"), args.questions))
    methods = [Method("none")] + [
        Method(f"random{k}", Steerer(["truthfulness", "toxicity", "bias"], loaded.hidden_size,
                                     generator=torch.Generator().manual_seed(k)), global_multiplier=1.0)
        for k in range(1, args.methods)]

    t0 = time.perf_counter()
    ev = Evaluator(loaded, site, "dev", limits, neutral=1, progress=False)
    ours = [{t: ev.task_scores(t, m) for t in ev.tasks} for m in methods]
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    plain = [{t: plain_scores(loaded, load_mc_questions(t, "dev", limit=n)) for t, n in limits.items()}
             for _ in methods]
    t_plain = time.perf_counter() - t0

    # The unsteered scores of both paths agree (same questions, same log-probs).
    check = ev._scores("truthfulqa", methods[0])
    pairs = [(a.double(), b.double()) for a, b in zip(check, plain[0]["truthfulqa"])]
    err = max(float((a - b).abs().max()) for a, b in pairs)
    rel = max(float(((a - b).abs() / b.abs().clamp_min(1.0)).max()) for a, b in pairs)
    kind, tol = CHECK_TOLERANCE[dtype]
    ok = (err if kind == "abs" else rel) < tol
    result = {"K": len(methods), "questions": limits, "matsteer_s": t_ours, "plain_s": t_plain,
              "ratio": t_plain / t_ours, "max_abs_logprob_diff_unsteered": err,
              "max_rel_logprob_diff_unsteered": rel, "check": {"kind": kind, "tolerance": tol, "ok": ok},
              **machine_fields(dtype),
              "machine": platform.processor() or platform.machine(), "n_scored": sum(r["n"] for r in ours[0].values())}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
