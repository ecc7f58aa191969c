"""One table of every benchmark's measure, goal and today's value, from the JSON files ``make bench`` writes.

Reads ``extract.json``, ``train.json``, ``generate.json``, ``eval.json`` in ``--dir``, and the float32 vs bfloat16
greedy-token agreement from ``generate.json``'s ``dtype_agreement`` block, and ``dtype_scores.json`` if present;
prints a markdown table (measure | goal | value | baseline (same run) | ratio | met?) and a line with the machine
(CPU model, torch threads, dtypes) and the date, and writes the same to ``--out`` (default ``DIR/report.md``).
A missing file shows as "not run". No model is loaded.

    python benchmarks/report.py                        # results/bench/*.json -> stdout + results/bench/report.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import Any

FILES = ("extract", "train", "generate", "eval")
HEADER = ("measure", "goal", "value", "baseline (same run)", "ratio", "met?")
NOT_RUN = "not run"
#: bf16 may move a task's primary metric by at most this many points (the whole-split bootstrap half-widths are 2-4).
TOLERANCE_POINTS = 1.0
#: Scored but not averaged: their own rows (the evaluator scores them in float32 by default).
PROBE_TASKS = ("toxigen",)


def load(folder: Path, name: str) -> dict[str, Any] | str:
    """The parsed ``folder/name.json``, or why not (a string)."""
    path = folder / f"{name}.json"
    if not path.is_file():
        return NOT_RUN
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__})"
    if not isinstance(data, dict):
        return "unreadable (not an object)"
    data.setdefault("_mtime_date", _dt.date.fromtimestamp(path.stat().st_mtime).isoformat())
    return data


def _rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def _met(ratio: float, goal: float, strict: bool = False) -> str:
    return "yes" if (ratio > goal if strict else ratio >= goal) else "**no**"


def _missing(measure: str, goal: str, why: str) -> tuple[str, ...]:
    return (measure, goal, why, "", "", "")


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def extract_rows(d: dict[str, Any] | str) -> list[tuple[str, ...]]:
    vs_ref, vs_plain = "extraction vs the reference approach", "extraction vs plain batched forward"
    if isinstance(d, str):
        return [_missing(vs_ref, "≥ 10x", d), _missing(vs_plain, "≥ 1.7x", d)]
    tps, dtype = d["tokens_per_s"], d.get("dtype", "float32?")
    ref_dtype = d.get("reference_dtype", "float32")
    plain_dtype = _get(d, "dtypes", "plain_batched") or dtype
    goals = d.get("targets", {})
    g_ref, g_plain = float(goals.get("vs_reference", 10.0)), float(goals.get("vs_plain_batched", 1.7))
    where = f"L{d.get('layer', '?')}, {d.get('texts', '?')} texts"
    ours = f"{_rate(tps['matsteer_extract'], 'tok/s')} ({dtype})"
    rows = [
        (f"{vs_ref} ({where}; one text at a time, every layer)", f"≥ {g_ref:g}x", ours,
         f"{_rate(tps['reference_one_by_one_all_layers'], 'tok/s')} ({ref_dtype})",
         f"{d['ratio_vs_reference']:.2f}x", _met(d["ratio_vs_reference"], g_ref)),
        (f"{vs_plain} ({where}; `output_hidden_states=True`)", f"≥ {g_plain:g}x", ours,
         f"{_rate(tps['plain_batched_hidden_states'], 'tok/s')} ({plain_dtype})",
         f"{d['ratio_vs_plain_batched']:.2f}x", _met(d["ratio_vs_plain_batched"], g_plain)),
    ]
    if "ratio_vs_plain_batched_length_sorted" in d:
        rows.append(("extraction vs plain batched, length-sorted (early exit alone)", "—", ours,
                     f"{_rate(tps['plain_batched_length_sorted'], 'tok/s')} ({plain_dtype})",
                     f"{d['ratio_vs_plain_batched_length_sorted']:.2f}x", "—"))
    c = d.get("dtype_compare")
    speed, err = "extraction speed, bfloat16 vs float32 (ours)", "extraction activations, bfloat16 vs float32"
    if not c:
        return rows + [_missing(speed, "—", "not run (`--compare-dtypes`)"),
                       _missing(err, "—", "not run (`--compare-dtypes`)")]
    ct = c["tokens_per_s"]
    rows.append((speed, "—", f"{_rate(ct['bfloat16'], 'tok/s')} (bfloat16)", f"{_rate(ct['float32'], 'tok/s')} (float32)",
                 f"{c['bf16_speedup_vs_float32']:.2f}x", "—"))
    rows.append((f"{err} (L{c.get('layer', '?')}, {c.get('rows', '?')} rows): ‖a_bf16 − a_f32‖ / ‖a_f32‖", "—",
                 f"{c['activation_rel_error']:.2e} (worst row {c.get('activation_rel_error_max_row', float('nan')):.2e})",
                 "float32 activations", "", "—"))
    return rows


def train_rows(d: dict[str, Any] | str, goal: float = 5.0) -> list[tuple[str, ...]]:
    measure = "training vs the reference-style trainer (steps/s)"
    if isinstance(d, str):
        return [_missing(measure, f"≥ {goal:g}x", d)]
    base = d["baseline"]["steps_per_s"]
    where = f"{d.get('epochs', '?')} epochs x {d.get('steps_per_epoch', '?')} steps, {_get(d, 'data', 'source') or '?'} data"
    rows = [(f"{measure}, reference preset ({where})", f"≥ {goal:g}x",
             _rate(d["matsteer"]["steps_per_s"], "steps/s"), _rate(base, "steps/s"), f"{d['speedup']:.2f}x",
             _met(d["speedup"], goal))]
    if "default" in d:
        ratio = d["default"]["steps_per_s"] / base
        rows.append(("training, default settings (another objective) vs the reference-style trainer", "—",
                     _rate(d["default"]["steps_per_s"], "steps/s"), _rate(base, "steps/s"), f"{ratio:.2f}x", "—"))
    return rows + gradient_rows(d.get("gradients"))


def gradient_rows(g: dict[str, Any] | None, goal: float = 1.5) -> list[tuple[str, ...]]:
    """The closed-form gradients (``FusedObjective``) against the fastest autograd path on the same run."""
    measure = "training, autograd within 1.5x of fused (closed-form) gradients (steps/s, default settings)"
    if not isinstance(g, dict) or "ratio" not in g:
        return [_missing(measure, f"≤ {goal:g}x", "not run (bench_train.py --gradients)")]
    fastest = g["fastest_autograd"]
    auto, closed = g[fastest], g["closed_form"]
    value = f"{_rate(auto['steps_per_s'], 'steps/s')} ({fastest})"
    if "compile_s" in auto:
        value += f", compiling {auto['compile_s']:.0f} s"
    # The ratio is fused over autograd: the goal is met when autograd is at most 1.5x slower.
    return [(measure, f"≤ {goal:g}x", value, f"{_rate(closed['steps_per_s'], 'steps/s')} (fused)",
             f"{g['ratio']:.2f}x", "yes" if g["ratio"] <= goal else "**no**")]


def generate_rows(d: dict[str, Any] | str, goal: float = 0.95) -> list[tuple[str, ...]]:
    measure = "steered vs unsteered batched greedy `generate`"
    agree = "greedy tokens, float32 vs bfloat16 (unsteered)"
    if isinstance(d, str):
        return [_missing(measure, f"≥ {goal:g}x", d), _missing(agree, "—", d)]
    where = f"{d.get('prompts', '?')} prompts x {d.get('new_tokens', '?')} tokens, {d.get('dtype', 'float32?')}"
    ratio = d["median_ratio"]
    rows = [(f"{measure} ({where}; median of {d.get('repeats', '?')})", f"≥ {goal:g}x",
             _rate(d["median_steered_tok_s"], "tok/s"), _rate(d["median_unsteered_tok_s"], "tok/s"),
             f"{ratio:.3f}x", _met(ratio, goal))]
    agreement = d.get("dtype_agreement")
    if not isinstance(agreement, dict):
        rows.append(_missing(agree, "—", "not run (`--compare-dtypes`)"))
    else:
        n = agreement.get("rows", "?")
        rows.append((f"{agree}, {n} prompts x {agreement.get('new_tokens', '?')} tokens", "—",
                     f"{agreement['prefix_agreement']:.1%} of tokens identical up to the first divergence; "
                     f"{agreement['identical_sequences']}/{n} continuations identical", "", "", "—"))
    return rows


def eval_rows(d: dict[str, Any] | str) -> list[tuple[str, ...]]:
    goal = "less than K full passes (ratio > 1)"
    if isinstance(d, str):
        return [_missing("scoring K methods vs K plain full forward passes", goal, d)]
    q = d.get("questions", {})
    where = " + ".join(f"{n} {t}" for t, n in q.items()) if isinstance(q, dict) else str(q)
    check = d.get("check", {})
    agrees = "" if not check else ("; unsteered log-probs agree" if check.get("ok") else "; **unsteered check failed**")
    return [(f"scoring K = {d['K']} methods ({where} dev questions, {d.get('dtype', 'float32?')}{agrees})", goal,
             f"{d['matsteer_s']:.1f} s", f"{d['plain_s']:.1f} s ({d['K']} full passes)", f"{d['ratio']:.2f}x",
             _met(d["ratio"], 1.0, strict=True))]


def row_settings_rows(d: dict[str, Any] | str) -> list[tuple[str, ...]]:
    measure, goal = "K steering settings in one batched pass (per-row settings) vs K passes", "> 1x"
    if isinstance(d, str):
        return [_missing(measure, goal, d)]
    rows = []
    for label, r, size in ((measure, d, f"{d.get('prompts', '?')} prompts, {d.get('mode', '?')}"),
                           ("K settings in one cached-scorer pass vs K cached passes", d.get("cached"),
                            f"{(d.get('cached') or {}).get('questions', '?')} questions")):
        if r is None:
            continue
        ratio = r["median_speedup"]
        rows.append((f"{label} (K = {r.get('settings', '?')}, {size}; median of {r.get('repeats', '?')})", goal,
                     f"{r['median_batched_s'] * 1e3:.1f} ms", f"{r['median_separate_s'] * 1e3:.1f} ms (K passes)",
                     f"{ratio:.2f}x", _met(ratio, 1.0, strict=True)))
    return rows


def dtype_score_rows(d: dict[str, Any] | str) -> list[tuple[str, ...]]:
    """bfloat16 minus float32 on the evaluation's primary metrics (``bench_dtype_scores.py``, not in make bench)."""
    measure = "task scores, bfloat16 minus float32 (points)"
    if isinstance(d, str):
        why = d if d != NOT_RUN else "not run (`benchmarks/bench_dtype_scores.py`, ~15 min)"
        return [_missing(measure, f"every |Δ| ≤ {TOLERANCE_POINTS:g} point", why)]
    sizes = d["runs"]["float32"]["sizes"]
    rows = []
    for name, diff in d["bf16_minus_f32"].items():
        attribute = {t: v for t, v in diff.items() if t not in PROBE_TASKS}
        cells = ", ".join(f"{t} {v * 100:+.2f}" for t, v in attribute.items())
        worst = max(abs(v) for v in attribute.values()) * 100
        rows.append((f"{measure}, {name} ({', '.join(f'{n} {t}' for t, n in sizes.items())} test questions)",
                     f"every |Δ| ≤ {TOLERANCE_POINTS:g} point", cells, "float32", "",
                     "yes" if worst <= TOLERANCE_POINTS else "**no**"))
        for t in PROBE_TASKS:
            if t in diff:
                rows.append((f"probe scores, bfloat16 minus float32 (points), {name}: {t}",
                             f"|Δ| ≤ {TOLERANCE_POINTS:g} point, else float32 for it", f"{diff[t] * 100:+.2f}",
                             "float32", "", "yes" if abs(diff[t]) * 100 <= TOLERANCE_POINTS
                             else "**no**: probes are scored in float32 by default"))
    rows.append(("scoring wall time, bfloat16 vs float32 (the two methods above)", "—",
                 f"{d['runs']['bfloat16']['seconds']:.0f} s", f"{d['runs']['float32']['seconds']:.0f} s",
                 f"{d['speedup_bf16']:.2f}x", "—"))
    return rows


def _dtypes(data: dict[str, dict[str, Any] | str]) -> list[str]:
    """Every dtype the runs name, in order of appearance."""
    seen: list[str] = []
    for d in data.values():
        if isinstance(d, str):
            continue
        named = d.get("dtypes")
        found = [d.get("dtype"), d.get("reference_dtype")]
        found += list(named.values()) if isinstance(named, dict) else list(named or [])
        found += list(_get(d, "dtype_compare", "tokens_per_s") or {})
        found += list(_get(d, "dtype_agreement", "dtypes") or [])
        seen += [x for x in dict.fromkeys(found) if isinstance(x, str) and x not in seen]
    return seen


def _cpu(d: dict[str, Any]) -> str:
    if d.get("cpu_model"):
        return str(d["cpu_model"])
    return str(d["machine"]) if isinstance(d.get("machine"), str) else "unknown CPU"


def footer(data: dict[str, dict[str, Any] | str]) -> str:
    ran = {k: v for k, v in data.items() if not isinstance(v, str)}
    if not ran:
        return "Machine: nothing has run yet (`make bench`)."
    cpus = " / ".join(dict.fromkeys(_cpu(d) for d in ran.values()))
    cores = sorted({d.get("cpu_count", _get(d, "machine", "cpu_count")) for d in ran.values()} - {None})
    core_text = f" ({', '.join(map(str, cores))} cores)" if cores else ""
    threads = {k: d.get("threads", _get(d, "machine", "threads")) for k, d in ran.items()}
    threads = {k: v for k, v in threads.items() if v is not None} or {"all": "?"}
    if len(set(threads.values())) == 1:
        thread_text = f"torch threads: {next(iter(threads.values()))}"
    else:
        thread_text = "torch threads: " + ", ".join(f"{k} {v}" for k, v in threads.items())
    versions = sorted({str(d.get("torch", _get(d, "machine", "torch"))) for d in ran.values()} - {"None"})
    torch_text = f", torch {', '.join(versions)}" if versions else ""
    dates = sorted({str(d.get("date") or d["_mtime_date"]) for d in ran.values()})
    date_text = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    dtypes = ", ".join(_dtypes(data)) or "unknown"
    return f"Machine: {cpus}{core_text}, {thread_text}{torch_text}; dtypes used: {dtypes}. Date: {date_text}."


def render(folder: Path) -> str:
    data = {name: load(folder, name) for name in FILES}
    rows: list[tuple[str, ...]] = []
    sections = ((extract_rows, data["extract"]), (train_rows, data["train"]),
                (generate_rows, data["generate"]), (row_settings_rows, load(folder, "row_settings")),
                (eval_rows, data["eval"]),
                (dtype_score_rows, load(folder, "dtype_scores")))
    for rows_of, d in sections:
        try:
            rows += rows_of(d)
        except (KeyError, TypeError, ValueError) as exc:  # a file from an older or broken run: say so, go on
            rows += rows_of(f"unreadable ({type(exc).__name__}: {exc})")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + footer(data) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="results/bench", help="where the bench_*.py JSON files are")
    ap.add_argument("--out", default=None, help="write the table here too (default: DIR/report.md)")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    text = render(folder)
    print(text, end="")
    out = Path(args.out) if args.out else folder / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
