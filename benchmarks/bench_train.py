"""Benchmark ``matsteer.core.training.train_steerer`` against a trainer written in the reference code's structure.

The baseline below is written from reading the structure of the reference trainer (``validation/steering.py`` in
github.com/duykhuongnguyen/MAT-Steer): one ``nn.Parameter`` vector and one ``nn.Linear(d, 1)`` gate per attribute,
Python loops over attributes for steering, gates, MMD (``cdist``-based kernel means) and the orthogonality pairs,
a fresh ``randperm`` of each pool per attribute per batch (positives, negatives, and a resampled positive set for
the MMD), and ``loss.item()`` every step. Both trainers run the same number of steps with the same batch
composition (``batch_per_side`` positives + negatives per attribute) on the same data, with the reference
loss variant so they optimise the same objective.

Side by side, the same training run (the default settings) with each way of getting the gradients
(``train_steerer(..., gradients=...)``): the closed form (``FusedObjective``, the default), autograd on
``loss_terms``, and autograd on ``torch.compile(loss_terms)`` (timed after a one-epoch warm-up run that compiles
it; the warm-up's wall time is recorded as ``compile_s``). The goal: keep the closed form only while no autograd
path comes within 1.5x of its steps/s.

Usage::

    python benchmarks/bench_train.py                      # synthetic: d=576, 3 attributes, 3000 rows per side
    python benchmarks/bench_train.py --epochs 10 --json results/bench_train.json
    python benchmarks/bench_train.py --features feats/truthfulqa feats/toxigen feats/bbq
    python benchmarks/bench_train.py --gradients autograd        # skip the compiled path (--gradients "": both)

``--features DIR``: one per attribute: a matsteer activation cache folder (``manifest.json`` +
``activations.safetensors``), or any directory / ``.safetensors`` file holding tensors ``positives`` and
``negatives`` ``[N, d]``, or ``activations``/``features`` ``[N, d]`` with ``labels`` ``[N]`` (1 = positive side).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import cpu_model, machine_fields  # noqa: E402

from matsteer.activations.features import load_features as load_feature_folder
from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.losses import loss_terms, weight_vector
from matsteer.core.sampling import BatchSampler
from matsteer.core.steerer import Steerer
from matsteer.core.training import TrainResult, train_steerer

#: The closed form is kept only while no autograd path comes within this factor of its steps/s.
GRADIENT_GOAL = 1.5

# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def synthetic(n_attr: int, rows: int, d: int, seed: int) -> list[AttributeData]:
    """Activation-like data: norms ~ 100, negatives a shifted, noisier copy of the positives' distribution."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g) * 3.0
    out = []
    for t in range(n_attr):
        shift = torch.randn(d, generator=g)
        pos = base + torch.randn(rows, d, generator=g) * 2.0
        neg = base + shift + torch.randn(rows + 137 * t, d, generator=g) * 2.0
        out.append(AttributeData(f"attr{t}", pos, neg))
    return out


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"No .safetensors files in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def load_features(paths: list[str]) -> list[AttributeData]:
    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir() and (path / "manifest.json").is_file():
            fs = load_feature_folder(path)
            out.append(AttributeData(fs.attribute, fs.positives.float(), fs.negatives.float(), fs.positive_side))
            continue
        t = _load_tensors(path)
        if "positives" in t and "negatives" in t:
            pos, neg = t["positives"], t["negatives"]
        else:
            acts = t.get("activations", t.get("features"))
            if acts is None or "labels" not in t:
                raise SystemExit(f"{path}: need 'positives'+'negatives' or 'activations'/'features'+'labels'")
            labels = t["labels"].reshape(-1)
            pos, neg = acts[labels == 1], acts[labels == 0]
        out.append(AttributeData(path.stem, pos.float(), neg.float()))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Baseline in the reference trainer's structure
# ----------------------------------------------------------------------------------------------------------------


class LoopSteering(nn.Module):
    """Per-attribute parameters and a Python loop over attributes, as in the reference module."""

    def __init__(self, d: int, n_attr: int) -> None:
        super().__init__()
        self.vectors = nn.ParameterList([nn.Parameter(torch.randn(d)) for _ in range(n_attr)])
        self.gates = nn.ModuleList([nn.Linear(d, 1) for _ in range(n_attr)])

    def forward(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = acts.clone()
        gate_list = []
        for vec, lin in zip(self.vectors, self.gates):
            g = torch.sigmoid(lin(acts))  # [n, 1]
            gate_list.append(g)
            out = out + g * vec
        return out, torch.cat(gate_list, dim=1)


def _kernel_mean(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(x, y, p=2) ** 2 / (2 * sigma**2)).mean()


def _mmd(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    return _kernel_mean(x, x, sigma) + _kernel_mean(y, y, sigma) - 2 * _kernel_mean(x, y, sigma)


def _renorm(orig: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    return adj * (orig.norm(p=2, dim=1, keepdim=True) / (adj.norm(p=2, dim=1, keepdim=True) + 1e-8))


def baseline_train(data: list[AttributeData], cfg: TrainConfig, sigma: float, steps_per_epoch: int) -> dict:
    """One training run in the reference trainer's structure: each step builds the batch by concatenating, per
    attribute, ``randperm``-drawn positives and negatives (with label and attribute-index tensors), runs the module
    once over the whole batch, renormalises, then loops over attributes for the MMD against freshly resampled
    positives; sparsity and preservation are means over all gates of the batch's negatives / positives."""
    torch.manual_seed(cfg.seed)
    d, n_attr, k = data[0].positives.shape[1], len(data), cfg.batch_per_side
    model = LoopSteering(d, n_attr)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    pools = [(a.positives.float(), a.negatives.float()) for a in data]
    start = time.perf_counter()
    last = math.nan
    for _epoch in range(cfg.epochs):
        opt.zero_grad()
        total = 0.0
        for _step in range(steps_per_epoch):
            rows, labels, owners = [], [], []
            for t, (pos_pool, neg_pool) in enumerate(pools):
                rows += [pos_pool[torch.randperm(pos_pool.shape[0])[:k]], neg_pool[torch.randperm(neg_pool.shape[0])[:k]]]
                labels += [1] * k + [0] * k
                owners += [t] * 2 * k
            batch = torch.cat(rows, dim=0)
            label_t = torch.tensor(labels, dtype=torch.float32)
            owner_t = torch.tensor(owners, dtype=torch.long)
            steered, gates = model(batch)
            steered = _renorm(batch, steered)
            mmd_sum = 0.0
            for t, (pos_pool, _) in enumerate(pools):
                mine = owner_t == t
                neg_steered = steered[mine][label_t[mine] == 0]
                fresh_pos = pos_pool[torch.randperm(pos_pool.shape[0])[:k]]
                mmd_sum = mmd_sum + _mmd(neg_steered, fresh_pos, sigma)
            ortho = 0.0
            vecs = list(model.vectors)
            for i in range(n_attr):
                for j in range(i + 1, n_attr):
                    ortho = ortho + (torch.dot(vecs[i], vecs[j]) / (vecs[i].norm() * vecs[j].norm())) ** 2
            loss = (
                cfg.lambda_mmd * mmd_sum / n_attr
                + cfg.lambda_sparse * gates[label_t == 0].abs().mean()
                + cfg.lambda_ortho * ortho
                + cfg.lambda_pos * gates[label_t == 1].pow(2).mean()
            )
            loss.backward()
            opt.step()
            opt.zero_grad()
            total += loss.item()
        last = total / steps_per_epoch
    wall = time.perf_counter() - start
    steps = cfg.epochs * steps_per_epoch
    return {"wall_s": wall, "steps": steps, "steps_per_s": steps / wall, "final_loss": last}


def autograd_train(data: list[AttributeData], cfg: TrainConfig, sigma: float) -> dict:
    """The batched objective (``loss_terms``) with autograd and ``torch.optim.Adam``: isolates what the
    closed-form gradients and the flat Adam add on top of vectorising over attributes."""
    d, k = data[0].positives.shape[1], cfg.batch_per_side
    steerer = Steerer([a.name for a in data], d, generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.Adam(steerer.parameters(), lr=cfg.lr)
    sampler = BatchSampler([a.positives.shape[0] for a in data], [a.negatives.shape[0] for a in data], k, cfg.seed,
                       cfg.loss_variant == "reference")
    pool_pos = torch.cat([a.positives.float() for a in data])
    pool_neg = torch.cat([a.negatives.float() for a in data])
    lam = weight_vector(cfg.lambdas())
    start = time.perf_counter()
    sums = torch.zeros(())
    for _epoch in range(cfg.epochs):
        pi, ni, ri = sampler.epoch(torch.device("cpu"))
        sums = torch.zeros(())
        for b in range(sampler.batches):
            terms = loss_terms(steerer.theta, steerer.gate_weight, steerer.gate_bias, pool_pos[pi[b]], pool_neg[ni[b]],
                               sigma=sigma, lambdas=lam, variant=cfg.loss_variant, preserve_norm=cfg.preserve_norm,
                               pos_mmd=pool_pos[ri[b]] if ri is not None else None)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            opt.step()
            sums += terms.total.detach()
    wall = time.perf_counter() - start
    steps = cfg.epochs * sampler.batches
    return {"wall_s": wall, "steps": steps, "steps_per_s": steps / wall, "final_loss": float(sums) / sampler.batches}


# ----------------------------------------------------------------------------------------------------------------
# Closed-form gradients vs autograd, the same training run
# ----------------------------------------------------------------------------------------------------------------


def _run_fields(r: TrainResult) -> dict:
    return {"wall_s": r.wall_time_s, "steps": r.steps, "steps_per_s": r.steps_per_s,
            "final_loss": sum(r.history.train["total"][-1])}


def compile_warmup(data: list[AttributeData], cfg: TrainConfig) -> dict:
    """One epoch with ``gradients="compiled"``: compiles the step (the measured run then reuses the compiled code).
    Returns ``compile_s`` (that epoch's whole wall time, compilation included), or the error if it failed."""
    start = time.perf_counter()
    try:
        train_steerer(data, TrainConfig(**{**cfg.to_dict(), "epochs": 1}), progress=False, gradients="compiled")
    except Exception as exc:  # no C compiler, an unsupported op: reported, and the compiled row is skipped
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    return {"compile_s": time.perf_counter() - start}


def gradient_summary(best: dict[str, dict], kinds: list[str], compiled: dict | None, cfg: TrainConfig) -> dict:
    """steps/s of each gradient path on the same run, and the closed form's lead over the fastest autograd path."""
    closed = best["default"]
    out: dict = {"settings": "default", "epochs": cfg.epochs, "goal_ratio_max": GRADIENT_GOAL,
                 "closed_form": closed}
    for kind in kinds:
        key = f"grad_{kind}"
        if key in best:
            out[kind] = {**best[key], "ratio_closed_form_over_this": closed["steps_per_s"] / best[key]["steps_per_s"]}
    if compiled is not None and "compiled" in kinds:
        out.setdefault("compiled", {}).update(compiled)
        if "wall_s" in out["compiled"] and "compile_s" in compiled:
            # A process trains once: its first compiled run pays the compilation too.
            first = out["compiled"]["wall_s"] + compiled["compile_s"]
            out["compiled"]["ratio_first_run_wall_over_closed_form"] = first / closed["wall_s"]
    measured = [k for k in kinds if k in out and "steps_per_s" in out[k]]
    if measured:
        fastest = max(measured, key=lambda k: out[k]["steps_per_s"])
        ratio = out[fastest]["ratio_closed_form_over_this"]
        out.update({"fastest_autograd": fastest, "ratio": ratio, "autograd_within_goal": ratio <= GRADIENT_GOAL})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", nargs="*", default=None, help="one directory / .safetensors per attribute")
    ap.add_argument("--attributes", type=int, default=3, help="synthetic: number of attributes")
    ap.add_argument("--rows", type=int, default=3000, help="synthetic: rows per side per attribute")
    ap.add_argument("--d", type=int, default=576, help="synthetic: hidden size")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--baseline-epochs", type=int, default=None, help="epochs for the baseline (default: --epochs)")
    ap.add_argument("--batch-per-side", type=int, default=16)
    ap.add_argument("--sigma", default="median", help="number or 'median' (same σ for both trainers)")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op CPU threads for both trainers (TrainConfig.cpu_threads; default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the trainers this many times; keep the best")
    ap.add_argument("--autograd-row", action="store_true",
                    help="also time the same batched objective with autograd + torch.optim.Adam")
    ap.add_argument("--gradients", default="autograd,compiled",
                    help="gradient paths timed beside the closed form on the default run (comma-separated: "
                         "autograd, compiled; empty: none)")
    ap.add_argument("--json", default=None, help="write results as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)  # the baseline runs under this; ours sets the same via cpu_threads
    data = load_features(args.features) if args.features else synthetic(args.attributes, args.rows, args.d, args.seed)
    sigma = args.sigma if args.sigma == "median" else float(args.sigma)
    # The reference preset: the same objective as the baseline. The default (supervised gates etc.) is timed beside.
    cfg = TrainConfig.preset(
        "reference", epochs=args.epochs, batch_per_side=args.batch_per_side, sigma=sigma,
        seed=args.seed, device=args.device, cpu_threads=args.threads,
    )
    default_cfg = TrainConfig(epochs=args.epochs, batch_per_side=args.batch_per_side, sigma=sigma, seed=args.seed,
                              device=args.device, cpu_threads=args.threads)

    if args.device != "cpu":
        raise SystemExit("The baseline runs on CPU only; use --device cpu.")
    base_epochs = args.baseline_epochs or args.epochs
    base_cfg = TrainConfig(**{**cfg.to_dict(), "epochs": base_epochs})
    load_before = os.getloadavg()
    kinds = [k for k in args.gradients.split(",") if k]
    runs: dict[str, list[dict]] = {"matsteer": [], "default": [], "baseline": [], "autograd": [],
                                   **{f"grad_{k}": [] for k in kinds}}
    compiled = compile_warmup(data, default_cfg) if "compiled" in kinds else None
    if compiled is not None and "error" in compiled:
        print(f"torch.compile failed, the compiled path is skipped: {compiled['error']}")
        kinds.remove("compiled")
    ours = None
    # Alternate the trainers and keep each one's fastest repeat: on a shared machine the load changes over time.
    for _ in range(args.repeats):
        ours = train_steerer(data, cfg, progress=False)
        runs["matsteer"].append({
            "wall_s": ours.wall_time_s, "steps": ours.steps, "steps_per_s": ours.steps_per_s,
            "final_loss": sum(ours.history.train["total"][-1]),
        })
        runs["default"].append(_run_fields(train_steerer(data, default_cfg, progress=False)))
        for kind in kinds:  # the same run with autograd's gradients
            runs[f"grad_{kind}"].append(_run_fields(train_steerer(data, default_cfg, progress=False, gradients=kind)))
        if args.autograd_row:
            runs["autograd"].append(autograd_train(data, cfg, ours.sigma_used))
        runs["baseline"].append(baseline_train(data, base_cfg, ours.sigma_used, ours.steps_per_epoch))
    assert ours is not None
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items() if v}
    base = best["baseline"]
    base_full_wall = base["wall_s"] * args.epochs / base_epochs  # per-step cost is constant
    result = {
        # Both trainers run on the CPU in float32 (features are stored in float32 whatever dtype extracted them).
        **machine_fields("float32", threads=args.threads),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": args.device,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "data": {
            "source": "features" if args.features else "synthetic",
            "attributes": [a.name for a in data],
            "d": int(data[0].positives.shape[1]),
            "rows": {a.name: [int(a.positives.shape[0]), int(a.negatives.shape[0])] for a in data},
            "batch": cfg.batch_per_side * 2 * len(data),
        },
        "loss_variant": cfg.loss_variant,
        "sigma_used": ours.sigma_used,
        "epochs": args.epochs,
        "steps_per_epoch": ours.steps_per_epoch,
        "repeats": args.repeats,
        "runs": {k: v for k, v in runs.items() if v},
        "matsteer": best["matsteer"],
        "baseline": {**base, "epochs": base_epochs, "wall_s_full_run": base_full_wall},
        "speedup": best["matsteer"]["steps_per_s"] / base["steps_per_s"],
    }
    result["default"] = best["default"]
    if "autograd" in best:
        result["autograd"] = best["autograd"]
    result["gradients"] = gradient_summary(best, kinds, compiled, default_cfg)
    header = ("trainer", "steps", "wall s", "steps/s", "vs baseline", "final loss")
    rows = [header]
    for label, key in (("matsteer, reference preset", "matsteer"), ("matsteer, default training", "default"),
                       ("default training, autograd", "grad_autograd"),
                       ("default training, compiled autograd", "grad_compiled"),
                       ("batched autograd", "autograd"), ("reference-style", "baseline")):
        if key in best:
            r = best[key]
            ratio = r["steps_per_s"] / base["steps_per_s"]
            rows.append((label, r["steps"], f"{r['wall_s']:.2f}", f"{r['steps_per_s']:.1f}", f"{ratio:.2f}x",
                         f"{r['final_loss']:.4f}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    print(f"speedup (steps/s): {result['speedup']:.2f}x   ({ours.steps_per_epoch} steps/epoch, {args.epochs} epochs, "
          f"batch {result['data']['batch']}, σ={ours.sigma_used:.3g}, {args.threads} thread(s), "
          f"load avg {load_before[0]:.1f} -> {result['machine']['loadavg_after'][0]:.1f}, best of {args.repeats})")
    g = result["gradients"]
    if "ratio" in g:
        print(f"closed form vs fastest autograd path ({g['fastest_autograd']}): {g['ratio']:.2f}x the steps/s "
              f"(goal for dropping the closed form: ≤ {GRADIENT_GOAL:g}x)"
              + (f"; torch.compile took {g['compiled']['compile_s']:.1f} s" if "compile_s" in g.get("compiled", {})
                 else ""))
    if base_epochs != args.epochs:
        print(f"baseline ran {base_epochs} epochs; extrapolated to {args.epochs} epochs: {base_full_wall:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


if __name__ == "__main__":
    main()
