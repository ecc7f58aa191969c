"""bfloat16 against float32 on the evaluation's tasks: the same questions scored in both dtypes, per task.

Scores no steering and one fixed random steerer (the random-direction control's kind of push: unit directions
scaled to ``--norm``, gates always on, every token of the query) on the test splits in float32 and in bfloat16,
and reports each task's primary metric in both, their difference, and the wall time of each dtype. Whole test
splits take about 15 minutes on 2 cores (float32 is the slow half), so ``make bench`` does not run it; pass
``--limit`` for a quick look.

    python benchmarks/bench_dtype_scores.py --json results/bench/dtype_scores.json [--limit 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchinfo import machine_fields  # noqa: E402

from matsteer.activations.models import load_model
from matsteer.activations.sites import Site
from matsteer.core.baselines import random_direction_steerer
from matsteer.eval.evaluator import Evaluator, Method
from matsteer.eval.tasks import PRIMARY

TASKS = ("truthfulqa", "toxigen_pref", "bbq")
PROBES = ("toxigen",)
ATTRIBUTES = ("truthfulness", "toxicity", "bias")


def score(dtype: str, limit: int | None, norm: float, layer: int) -> dict:
    loaded = load_model(dtype=dtype, progress=False)
    limits = dict.fromkeys((*TASKS, *PROBES), limit)
    t0 = time.perf_counter()
    # probe_dtype=None: the probe in the compute dtype too (the evaluator scores probes in float32 by default,
    # because of what this benchmark shows).
    ev = Evaluator(loaded, Site(layer), "test", limits, probes=PROBES, progress=False, probe_dtype=None)
    control = random_direction_steerer(list(ATTRIBUTES), loaded.hidden_size, torch.full((3,), norm), seed=0)
    methods = {"none": Method("none"), "random": Method("random", control, positions="prompt")}
    out = {name: ev.evaluate(m) for name, m in methods.items()}
    return {"seconds": time.perf_counter() - t0, "sizes": {t: len(ev.questions[t]) for t in ev.all_tasks},
            "scores": {name: {t: r[t][PRIMARY[t]] for t in (*TASKS, *PROBES)} | {"mean": r["mean"]}
                       for name, r in out.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="questions per task (default: whole test splits)")
    ap.add_argument("--norm", type=float, default=8.0, help="the random steerer's ‖θ_t‖")
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = {dtype: score(dtype, args.limit, args.norm, args.layer) for dtype in ("float32", "bfloat16")}
    diff = {name: {k: runs["bfloat16"]["scores"][name][k] - v for k, v in row.items()}
            for name, row in runs["float32"]["scores"].items()}
    res = {**machine_fields(), "dtype": "float32 vs bfloat16", "limit": args.limit, "norm": args.norm,
           "runs": runs, "bf16_minus_f32": diff,
           "speedup_bf16": runs["float32"]["seconds"] / runs["bfloat16"]["seconds"]}
    for name, row in diff.items():
        print(f"{name:7s} " + "  ".join(f"{k} {runs['float32']['scores'][name][k] * 100:.2f} -> "
                                        f"{runs['bfloat16']['scores'][name][k] * 100:.2f} ({v * 100:+.2f})"
                                        for k, v in row.items()))
    print(f"float32 {runs['float32']['seconds']:.0f} s, bfloat16 {runs['bfloat16']['seconds']:.0f} s: "
          f"{res['speedup_bf16']:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
