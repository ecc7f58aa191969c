"""The comparison's report as markdown: the methods x tasks table beside the constant answer, what dev chose,
MAT-Steer's training health, the bootstrap intervals and the smallest detectable difference, the paper's numbers;
and :func:`write_report`, which writes a report's JSON and markdown whole or not at all."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matsteer.eval.config import METHOD_LABELS, METHODS
from matsteer.eval.tasks import PRIMARY, TASKS
from matsteer.files import atomic_path, write_json

#: Llama-3.1-8B, layer 14, the paper's Table 1 (TruthfulQA MC2 / ToxiGen / BBQ accuracy, %). For orientation only:
#: the paper's ToxiGen and BBQ numbers are plain accuracies, not our preference and balanced metrics.
PAPER_TABLE1 = {
    "none": (49.91, 48.10, 51.77), "icl": (55.32, 51.26, 56.46), "iti": (52.68, 52.55, 53.45),
    "mat_steer": (61.94, 57.59, 60.32),
}

#: The paper's Table 4 "All tokens (uniform)" row (its caption says Llama-3.1-8B; its base row is Qwen2.5-7B's).
PAPER_TABLE4_UNIFORM = (58.09, 55.92, 59.74)

#: Task columns of the table: (task, metric, header). The first column of each task is its primary metric.
_COLUMNS = (
    ("truthfulqa", "mc2", "TruthfulQA MC2"),
    ("truthfulqa", "mc1", "TruthfulQA MC1"),
    ("toxigen_pref", "accuracy", "ToxiGen pref. (sum)"),
    ("toxigen_pref", "accuracy_per_token", "ToxiGen pref. (per token)"),
    ("bbq", "balanced", "BBQ ½(ambig + disambig)"),
)

#: The probes' columns: primary first, then the per-class accuracies in brackets.
_PROBE_COLUMNS = {"toxigen": ("balanced_accuracy", "accuracy_toxic", "accuracy_benign",
                              "ToxiGen Yes/No probe: balanced (toxic / benign)")}

MARK = "†"


def _ms(value: Any) -> tuple[float, float] | None:
    """(mean, std) of a summarised metric, or None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return float(value["mean"]), float(value.get("std", 0.0))
    return float(value), 0.0


def _fmt(ms: Any, scale: float = 100.0) -> str:
    """``mean ± std`` scaled (points by default), or n/a."""
    v = _ms(ms)
    return "n/a" if v is None else f"{v[0] * scale:.2f} ± {v[1] * scale:.2f}"


def _short(ms: Any, scale: float = 100.0, digits: int = 1) -> str:
    """The mean alone, scaled, or n/a."""
    v = _ms(ms)
    return "n/a" if v is None else f"{v[0] * scale:.{digits}f}"


def _at_or_below(value: Any, constant: Any) -> bool:
    """Whether ``value``'s mean is at or below ``constant``'s (both defined)."""
    a, c = _ms(value), _ms(constant)
    return a is not None and c is not None and a[0] <= c[0] + 1e-12


def _row_cells(t: Mapping[str, Any], const: Mapping[str, Any] | None, tasks: Sequence[str],
               probes: Sequence[str]) -> list[str]:
    """The cells of one table row; primary metrics at or below the constant's are marked."""

    def marked(task: str, metric: str, text: str) -> str:
        is_primary = PRIMARY.get(task) == metric
        if const is not None and is_primary and task in const and _at_or_below(t[task][metric], const[task][metric]):
            return f"{text} {MARK}"
        return text

    cells = []
    for task, metric, _ in _COLUMNS:
        if task not in tasks:
            continue
        cells.append(marked(task, metric, _fmt(t[task].get(metric))))
        if task == "bbq":
            bbq = t["bbq"]
            cells.append(f"{_short(bbq.get('ambig'))} / {_short(bbq.get('disambig'))}")
            cells.append(f"{_short(bbq.get('s_dis'))} / {_short(bbq.get('s_amb'))}")
    mean = _fmt(t["mean"])
    if const is not None and _at_or_below(t["mean"], const["mean"]):
        mean = f"{mean} {MARK}"
    cells.append(mean)
    for probe in probes:
        if probe in _PROBE_COLUMNS:
            main, a, b, _ = _PROBE_COLUMNS[probe]
            cells.append(marked(probe, main, f"{_fmt(t[probe].get(main))} ({_short(t[probe].get(a))} / "
                                             f"{_short(t[probe].get(b))})"))
    side = t.get("side_effects", {})
    cells += [_fmt(side.get("ce"), 1), _fmt(side.get("kl"), 1)]
    return cells


def _ci_cell(ci: Mapping[str, Any]) -> str:
    """An interval as ``+d [+low, +high]`` in points."""
    return f"{ci['mean_diff'] * 100:+.2f} [{ci['low'] * 100:+.2f}, {ci['high'] * 100:+.2f}]"


def in_table_order(entries: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``entries`` in the order of :data:`METHODS` (then any others as given): eval.json is written with sorted
    keys, and a table read back from it keeps the comparison's order."""
    rank = {name: i for i, name in enumerate(METHODS)}
    return sorted(entries.items(), key=lambda kv: rank.get(kv[0], len(rank)))


def _interval_table(rows: Mapping[str, Mapping[str, Any]], report: Mapping[str, Any],
                    keys: Sequence[str]) -> list[str]:
    """One markdown table of intervals: a row per method, a column per task (and the mean)."""
    head = " | ".join(_task_header(k) for k in keys)
    lines = [f"| method | {head} |", "|---" * (len(keys) + 1) + "|"]
    for name, row in in_table_order(rows):
        label = report["methods"][name]["label"]
        lines.append(f"| {label} | " + " | ".join(_ci_cell(row[k]) if k in row else "n/a" for k in keys) + " |")
    return lines


def _task_header(key: str) -> str:
    """A task's short column header."""
    return {"truthfulqa": "TruthfulQA MC2", "toxigen_pref": "ToxiGen pref.", "bbq": "BBQ ½(ambig + disambig)",
            "mean": "mean", "toxigen": "ToxiGen Yes/No (balanced)", "hh_rlhf": "HH-RLHF"}.get(key, key)


def markdown_table(report: dict[str, Any]) -> str:
    """Reference rows and methods x tasks (mean ± std over seeds, %), side effects, intervals against no
    steering and against the best baseline, the smallest detectable difference, and the paper's numbers."""
    methods = report["methods"]
    first = next(iter(methods.values()))["test"]
    tasks = [t for t in TASKS if t in first]
    probes = [p for p in _PROBE_COLUMNS if p in first]
    const_entry = report.get("reference", {}).get("constant")
    const = const_entry["test"] if const_entry else None
    lines = _score_table(report, tasks, probes)
    lines += ["", f"{MARK} at or below the constant / majority answer on that task's primary metric (first column "
              "of each task) or on the mean. Mean: the mean of the attribute tasks' primary metrics; the ToxiGen "
              "Yes/No probe is not in it. CE / KL: n/a for methods that do not edit activations."]
    if const is not None:
        answers = "; ".join(f"{t}: {const[t]['answer']}" for t in (*tasks, *probes) if "answer" in const[t])
        lines.append(f"Constant answers: {answers}.")
    if "unsteered_ce" in report.get("reference", {}):
        lines.append(f"Unsteered cross-entropy on the neutral text: {report['reference']['unsteered_ce']:.3f} nats.")
    lines += size_and_choice_lines(report)
    keys = [*tasks, "mean", *probes]
    lines += _detectable_lines(report.get("detectable"), keys)
    mat = methods.get("mat_steer", {})
    lines += health_lines(mat.get("health", []), mat.get("seeds", []))
    lines += _interval_lines(report, keys)
    return "\n".join(lines + _paper_lines()) + "\n"


def _score_table(report: Mapping[str, Any], tasks: Sequence[str], probes: Sequence[str]) -> list[str]:
    """The methods x tasks table (the constant answer's row first), metric cells at or below it marked."""
    const_entry = report.get("reference", {}).get("constant")
    const = const_entry["test"] if const_entry else None
    headers = [h for task, _, h in _COLUMNS if task in tasks]
    if "bbq" in tasks:
        i = headers.index("BBQ ½(ambig + disambig)")
        headers[i + 1:i + 1] = ["BBQ ambig / disambig", "BBQ s_DIS / s_AMB (×100)"]
    headers += ["mean", *[_PROBE_COLUMNS[p][3] for p in probes], "neutral CE (nats)", "KL (nats)"]
    lines = ["| method | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    if const_entry is not None:
        lines.append(f"| {const_entry['label']} | " + " | ".join(_row_cells(const_entry["test"], None, tasks, probes))
                     + " |")
    for _, m in in_table_order(report["methods"]):
        lines.append(f"| {m['label']} | " + " | ".join(_row_cells(m["test"], const, tasks, probes)) + " |")
    return lines


def _detectable_lines(det: Mapping[str, Any] | None, keys: Sequence[str]) -> list[str]:
    """The smallest detectable difference and no steering's own interval half-width, per column."""
    if not det:
        return []
    return ["", "Smallest difference the test sizes can detect, in points (two-sided 5% test, 80% power, "
            "from no steering's per-question variance, methods treated as independent: an upper bound; "
            "docs/eval-schema.md): "
            + ", ".join(f"{_task_header(k)} {det['mde'][k] * 100:.1f}" for k in keys)
            + ". Half-width of no steering's own 95% interval: "
            + ", ".join(f"{_task_header(k)} ±{det['ci_halfwidth'][k] * 100:.1f}" for k in keys) + "."]


def _interval_lines(report: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The interval tables: every method minus no steering, and minus the best baseline by dev score."""
    lines: list[str] = []
    intervals = report.get("intervals", {})
    if intervals.get("vs_none"):
        lines += ["", "Method minus no steering, points, 95% bootstrap interval over test questions and seeds:", ""]
        lines += _interval_table(intervals["vs_none"], report, keys)
    best = report.get("best_baseline", {}).get("name")
    if best and intervals.get("vs_best_baseline"):
        pool = ", ".join(report["best_baseline"]["pool"])
        lines += ["", f"Method minus the best baseline by dev score ({report['methods'][best]['label']}; chosen from "
                  f"{pool}: not MAT-Steer's own variants, not the controls), points, 95% bootstrap interval over test "
                  "questions and seeds:", ""]
        lines += _interval_table(intervals["vs_best_baseline"], report, keys)
    return lines


def _paper_lines() -> list[str]:
    """The paper's Table 1 (and Table 4's uniform-gates row), for orientation."""
    lines = ["", "Paper, Llama-3.1-8B, Table 1 (for orientation only; another model, other splits, and plain "
             "ToxiGen / BBQ accuracy rather than our preference and balanced metrics):", "",
             "| method | TruthfulQA MC2 | ToxiGen | BBQ |", "|---|---|---|---|"]
    for name, (a, b, c) in PAPER_TABLE1.items():
        lines.append(f"| {METHOD_LABELS[name]} (paper) | {a} | {b} | {c} |")
    a, b, c = PAPER_TABLE4_UNIFORM
    lines.append(f"| {METHOD_LABELS['uniform_gates']} (paper, Table 4) | {a} | {b} | {c} |")
    return lines


#: Plain task names for counts ("TruthfulQA 408"), where the table headers name a metric.
_TASK_NAMES = {"truthfulqa": "TruthfulQA", "toxigen_pref": "ToxiGen pairs", "bbq": "BBQ", "toxigen": "ToxiGen Yes/No",
               "hh_rlhf": "HH-RLHF"}


def _params_text(params: Mapping[str, Any]) -> str:
    """A method's dev choice as text."""
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "nothing to choose"


def size_and_choice_lines(report: Mapping[str, Any]) -> list[str]:
    """Question counts per split and task, and what dev chose for every method (and MAT-Steer's training)."""
    lines = []
    sizes = report.get("sizes")
    if sizes:
        lines.append("Questions: " + "; ".join(f"{split} " + ", ".join(f"{_TASK_NAMES.get(t, t)} {sizes[split][t]}"
                                                                       for t in _TASK_NAMES if t in sizes[split])
                                               for split in ("dev", "test")) + ".")
    selection = report.get("selection", {})
    chosen = [f"{entry['label']}: {_params_text(selection[m]['chosen'])}"
              for m, entry in in_table_order(report.get("methods", {})) if m in selection]
    if chosen:
        training = selection.get("training_default", {}).get("chosen", {}).get("overrides")
        lines.append("Chosen on dev (seed 0): " + "; ".join(chosen)
                     + (f"; MAT-Steer's training overrides: {training or 'none (the default)'}."
                        if training is not None else "."))
    return lines


def health_lines(healths: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> list[str]:
    """MAT-Steer's training health per seed (dev activations) as a small markdown table, and its verdicts."""
    if not healths:
        return []
    names = healths[0]["attributes"]
    lines = ["", "Training health of MAT-Steer on the dev activations (docs/training.md), per seed: each gate's AUC "
             "on its own attribute, each θ's cosine with its own attribute's mean difference, saturated gate logits:",
             "", "| seed | own-gate AUC | cos(θ, own mean difference) | saturated | verdicts |", "|---|---|---|---|---|"]
    for seed, h in zip(seeds, healths):
        aucs = " / ".join(f"{h['gate_auc'][t][t]:.2f}" for t in range(len(names)))
        coss = " / ".join(f"{h['theta_cos'][t][t]:+.2f}" for t in range(len(names)))
        sat = " / ".join(f"{v:.1%}" for v in h["saturated"])
        verdicts = "; ".join(h["verdicts"]) if h["verdicts"] else "healthy"
        lines.append(f"| {seed} | {aucs} | {coss} | {sat} | {verdicts} |")
    lines.append(f"(attributes in order: {', '.join(names)})")
    return lines


def write_report(report: dict[str, Any], out_dir: Path, name: str = "eval",
                 table: Callable[[dict[str, Any]], str] = markdown_table) -> None:
    """``{name}.json`` and its markdown ``table`` as ``{name}.md``, each written whole or not at all."""
    write_json(Path(out_dir) / f"{name}.json", report)
    with atomic_path(Path(out_dir) / f"{name}.md") as tmp:
        tmp.write_text(table(report), encoding="utf-8")
