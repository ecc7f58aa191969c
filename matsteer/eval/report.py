"""The comparison's report as markdown: the methods x tasks table beside the constant answer, what dev chose,
MAT-Steer's training health, BBQ's abstention guard, every method's gain over the better of the constant answer
and the temperature controls, the bootstrap intervals (cluster bootstrap and Holm's correction where the report
has them) and the smallest detectable difference, the paper's numbers; and :func:`write_report`, which writes a
report's JSON and markdown whole or not at all. Older ``eval.json`` files (no clusters, no answers, no temperature
control) render with what they have."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matsteer.eval.config import CONTROLS, METHOD_LABELS, METHODS, TEMPERATURE_CONTROLS
from matsteer.eval.tasks import TASKS, primary_of
from matsteer.files import atomic_path, write_json

#: Llama-3.1-8B, layer 14, the paper's Table 1 (TruthfulQA MC2 / ToxiGen / BBQ accuracy, %). For orientation only:
#: the paper's ToxiGen and BBQ numbers are plain accuracies, not our preference and disambiguated metrics.
PAPER_TABLE1 = {
    "none": (49.91, 48.10, 51.77), "icl": (55.32, 51.26, 56.46), "iti": (52.68, 52.55, 53.45),
    "mat_steer": (61.94, 57.59, 60.32),
}

#: The paper's Table 4 "All tokens (uniform)" row (its caption says Llama-3.1-8B; its base row is Qwen2.5-7B's).
PAPER_TABLE4_UNIFORM = (58.09, 55.92, 59.74)

#: Task columns of the table: (task, metric, header). The first column of each task is its primary metric; BBQ's
#: two accuracy columns come in the order of the report's primary (:func:`_columns`), then the text columns of
#: :data:`_BBQ_TEXT_COLUMNS`.
_COLUMNS = (
    ("truthfulqa", "mc2", "TruthfulQA MC2"),
    ("truthfulqa", "mc1", "TruthfulQA MC1"),
    ("toxigen_pref", "accuracy", "ToxiGen pref. (sum)"),
    ("toxigen_pref", "accuracy_per_token", "ToxiGen pref. (per token)"),
    ("bbq", "disambig", "BBQ disambig"),
    ("bbq", "balanced", "BBQ ½(ambig + disambig)"),
)

#: BBQ's columns beside its two accuracies: (header, metric pair shown as ``a / b``, scale).
_BBQ_TEXT_COLUMNS = (("BBQ ambig (= \"unknown\" rate) / \"unknown\" rate disambig", ("ambig", "unknown_disambig")),
                     ("BBQ s_DIS / s_AMB (×100)", ("s_dis", "s_amb")))


def _columns(bbq_primary: str) -> list[tuple[str, str, str]]:
    """:data:`_COLUMNS` with BBQ's primary (``bbq_primary``, the report's) first among its columns."""
    bbq = sorted((c for c in _COLUMNS if c[0] == "bbq"), key=lambda c: c[1] != bbq_primary)
    return [c for c in _COLUMNS if c[0] != "bbq"] + bbq

#: The probes' columns: primary first, then the per-class accuracies in brackets.
_PROBE_COLUMNS = {"toxigen": ("balanced_accuracy", "accuracy_toxic", "accuracy_benign",
                              "ToxiGen Yes/No probe: balanced (toxic / benign)")}

MARK = "†"
#: Marks a BBQ score whose gain does not count: disambiguated accuracy not shown non-inferior to no steering.
GUARD_MARK = "‡"
#: The abstention guard's non-inferiority margin (as :data:`matsteer.eval.comparison.NI_MARGIN`; the report reads
#: the margin an ``eval.json`` recorded and falls back to this one).
DEFAULT_MARGIN = 0.02
#: The guard verdicts whose BBQ gain does not count (:func:`matsteer.eval.comparison.guard_verdict`).
#: (and ``"unchecked"``: an older eval.json without intervals, where non-inferiority cannot be shown).
FLAGGED = ("abstaining", "over-answering", "inferior", "unproven", "unchecked")


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
               probes: Sequence[str], guarded: bool = False, primary: Mapping[str, str] | None = None) -> list[str]:
    """The cells of one table row; primary metrics (``primary``: the report's, :func:`_primaries`) at or below the
    constant's are marked, and the BBQ score with :data:`GUARD_MARK` where ``guarded`` (its gain does not count)."""
    primary = primary or _primaries({})

    def marked(task: str, metric: str, text: str) -> str:
        is_primary = primary.get(task) == metric
        if const is not None and is_primary and task in const and _at_or_below(t[task][metric], const[task][metric]):
            return f"{text} {MARK}"
        return text

    cells = []
    for task, metric, _ in _columns(primary["bbq"]):
        if task not in tasks:
            continue
        cells.append(marked(task, metric, _fmt(t[task].get(metric))))
        if task == "bbq" and metric == primary["bbq"] and guarded:
            cells[-1] += f" {GUARD_MARK}"
    if "bbq" in tasks:
        bbq = t["bbq"]
        cells += [f"{_short(bbq.get(a))} / {_short(bbq.get(b))}" for _, (a, b) in _BBQ_TEXT_COLUMNS]
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
    head = " | ".join(_task_header(k, primary_of(report, "bbq")) for k in keys)
    lines = [f"| method | {head} |", "|---" * (len(keys) + 1) + "|"]
    for name, row in in_table_order(rows):
        label = report["methods"][name]["label"]
        lines.append(f"| {label} | " + " | ".join(_ci_cell(row[k]) if k in row else "n/a" for k in keys) + " |")
    return lines


def _task_header(key: str, bbq: str = "disambig") -> str:
    """A task's short column header (its primary metric's; ``bbq``: BBQ's in this report, :func:`matsteer.eval.
    tasks.primary_of`)."""
    if key == "bbq":
        return "BBQ ½(ambig + disambig)" if bbq == "balanced" else f"BBQ {bbq}"
    return {"truthfulqa": "TruthfulQA MC2", "toxigen_pref": "ToxiGen pref.", "mean": "mean",
            "toxigen": "ToxiGen Yes/No (balanced)", "hh_rlhf": "HH-RLHF"}.get(key, key)


def _primaries(report: Mapping[str, Any]) -> dict[str, str]:
    """Every task's primary metric as ``report`` was written with it (:func:`matsteer.eval.tasks.primary_of`)."""
    return {t: primary_of(report, t) for t in (*TASKS, *_PROBE_COLUMNS, "hh_rlhf")}


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
    if "bbq" in tasks:
        lines += bbq_primary_lines(report)
    if const is not None:
        answers = "; ".join(f"{t}: {const[t]['answer']}" for t in (*tasks, *probes) if "answer" in const[t])
        lines.append(f"Constant answers: {answers}.")
    if "unsteered_ce" in report.get("reference", {}):
        lines.append(f"Unsteered cross-entropy on the neutral text: {report['reference']['unsteered_ce']:.3f} nats.")
    lines += size_and_choice_lines(report)
    keys = [*tasks, "mean", *probes]
    lines += _detectable_lines(report.get("detectable"), keys, primary_of(report, "bbq"))
    mat = methods.get("mat_steer", {})
    lines += health_lines(mat.get("health", []), mat.get("seeds", []))
    if "bbq" in tasks:
        lines += guard_lines(report)
    lines += control_gain_lines(report, tasks)
    lines += _interval_lines(report, keys)
    lines += holm_lines(report)
    if report.get("protocol"):
        lines[:0] = [f"Protocol: steer {_PROTOCOL_WORDS.get(report['protocol'], report['protocol'])} while scoring"
                     + (" (the primary protocol; variants below)." if report.get("protocols") else "."), ""]
    for name, part in report.get("protocols", {}).items():
        lines += ["", f"## Protocol variant: {name}", "", markdown_table(part).rstrip("\n")]
    variant = "protocol" in report and "config" not in report  # a protocol variant's part: no paper lines again
    return "\n".join(lines + ([] if variant else _paper_lines())) + "\n"


#: How eval.md names each protocol (position policy).
_PROTOCOL_WORDS = {"prompt": "the query tokens (the paper's protocol)", "all": "every token",
                   "generated": "the answer tokens only", "last": "the last query token",
                   "random": "a seeded random half of the query tokens"}


def _score_table(report: Mapping[str, Any], tasks: Sequence[str], probes: Sequence[str]) -> list[str]:
    """The methods x tasks table (the constant answer's row first), metric cells at or below it marked."""
    const_entry = report.get("reference", {}).get("constant")
    const = const_entry["test"] if const_entry else None
    primary = _primaries(report)
    headers = [h + (" (primary)" if task == "bbq" and metric == primary["bbq"] else "")
               for task, metric, h in _columns(primary["bbq"]) if task in tasks]
    if "bbq" in tasks:
        headers += [h for h, _ in _BBQ_TEXT_COLUMNS]
    headers += ["mean", *[_PROBE_COLUMNS[p][3] for p in probes], "neutral CE (nats)", "KL (nats)"]
    lines = ["| method | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    if const_entry is not None:
        lines.append(f"| {const_entry['label']} | "
                     + " | ".join(_row_cells(const_entry["test"], None, tasks, probes, primary=primary)) + " |")
    verdicts = bbq_verdicts(report) if "bbq" in tasks else {}
    for name, m in in_table_order(report["methods"]):
        flagged = verdicts.get(name, {}).get("verdict") in FLAGGED
        lines.append(f"| {m['label']} | " + " | ".join(_row_cells(m["test"], const, tasks, probes, flagged, primary))
                     + " |")
    return lines


def _detectable_lines(det: Mapping[str, Any] | None, keys: Sequence[str], bbq: str = "disambig") -> list[str]:
    """The smallest detectable difference (and, where recorded, the design effect) and no steering's own interval
    half-width, per column (``bbq``: BBQ's primary metric, for its header)."""
    if not det:
        return []
    half = ", ".join(f"{_task_header(k, bbq)} ±{det['ci_halfwidth'][k] * 100:.1f}" for k in keys)
    mde = ", ".join(f"{_task_header(k, bbq)} {det['mde'][k] * 100:.1f}" for k in keys)
    if "design_effect" not in det:  # an older eval.json: the power rule from no steering's variance alone
        return ["", "Smallest difference the test sizes can detect, in points (two-sided 5% test, 80% power, "
                "from no steering's per-question variance, methods treated as independent: an upper bound; "
                f"docs/eval-schema.md): {mde}. Half-width of no steering's own 95% interval: {half}."]
    deff = ", ".join(f"{_task_header(k, bbq)} {det['design_effect'][k]:.1f}" for k in keys
                     if det["design_effect"].get(k) is not None)
    paired = ", ".join(f"{_task_header(k, bbq)} {det['mde_paired'][k] * 100:.1f}" for k in keys)
    independent = ", ".join(f"{_task_header(k, bbq)} {det['mde_independent'][k] * 100:.1f}" for k in keys)
    return ["", "Smallest difference the test sizes can detect, in points (two-sided 5% test, 80% power; the larger of "
            "the paired and the independent figure; docs/eval-schema.md): " + mde + ". Paired (from the cluster-"
            f"bootstrap standard error of MAT-Steer minus no steering: both methods, pairing, clusters, seeds): {paired}; "
            f"independent (from the two methods' own cluster-bootstrap standard errors): {independent}. Design effect "
            f"of the paired difference (clustered over plain question bootstrap variance): {deff}. Half-width of no "
            f"steering's own 95% cluster interval: {half}."]


def _interval_lines(report: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The interval tables: every method minus no steering, and minus the best baseline by dev score."""
    lines: list[str] = []
    intervals = report.get("intervals", {})
    kind = _interval_kind(intervals, bool(report.get("clusters")))
    if intervals.get("vs_none"):
        lines += ["", f"Method minus no steering, points, 95% {kind}:", ""]
        lines += _interval_table(intervals["vs_none"], report, keys)
    best = report.get("best_baseline", {}).get("name")
    if best and intervals.get("vs_best_baseline"):
        pool = ", ".join(report["best_baseline"]["pool"])
        lines += ["", f"Method minus the best baseline by dev score ({report['methods'][best]['label']}; chosen from "
                  f"{pool}: not MAT-Steer's own variants, not the controls), points, 95% {kind}:", ""]
        lines += _interval_table(intervals["vs_best_baseline"], report, keys)
    return lines


def _interval_kind(intervals: Mapping[str, Any], clustered: bool = True) -> str:
    """What the interval records of ``intervals`` are: the cluster bootstrap (``clustered``: the report has
    ``clusters``; else every question its own cluster), or (older files) the bootstrap over questions and
    independently drawn seeds."""
    first: Mapping[str, Any] = next(
        (rec for table in intervals.values() for row in table.values() for rec in row.values()), {})
    if "n_clusters" not in first:
        return "bootstrap interval over test questions and seeds"
    if not clustered:
        return ("bootstrap interval over test questions (each its own cluster: this eval.json has no clusters) and "
                "seeds paired across methods")
    return ("cluster bootstrap interval (whole clusters of test questions: BBQ templates, TruthfulQA categories, "
            "ToxiGen target groups; seeds paired across methods; the plain question bootstrap where that is "
            "wider, docs/eval-schema.md)")


def holm_lines(report: Mapping[str, Any]) -> list[str]:
    """The headline comparisons with their cluster-bootstrap and Holm-adjusted p-values (where recorded)."""
    family = report.get("holm")
    if not family or not family.get("tests"):
        return []
    methods = report["methods"]
    lines = ["", f"Headline comparisons, Holm-corrected across the family ({family['family']}; family-wise "
             f"α = {family['alpha']:g}): difference in points, cluster-bootstrap p, Holm-adjusted p, and whether it "
             "survives:", "", "| comparison | key | difference | p | Holm p | survives |", "|---|---|---|---|---|---|"]
    for t in family["tests"]:
        label = f"{methods[t['method']]['label']} minus {methods[t['reference']]['label']}"
        key = _task_header(t["key"], primary_of(report, "bbq"))
        lines.append(f"| {label} | {key} | {t['mean_diff'] * 100:+.2f} | {t['p']:.4f} | "
                     f"{t['p_holm']:.4f} | {'yes' if t['reject'] else 'no'} |")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# BBQ's abstention guard and the gains over the constant answer and the temperature controls


def bbq_primary_lines(report: Mapping[str, Any]) -> list[str]:
    """What BBQ's primary column is, the guard mark, and (``report["primary_change"]``) that the dev selections of a
    converted file were made under the earlier primary."""
    if primary_of(report, "bbq") == "disambig":
        what = ("BBQ's primary metric is disambiguated accuracy, the BBQ number no context-blind bonus on \"unknown\" "
                "can raise (on a disambiguated question \"unknown\" is never the gold answer, so the bonus can only "
                "turn right answers wrong); ½(ambig + disambig), ambiguous accuracy (the share of ambiguous questions "
                "answered \"unknown\"), the disambiguated \"unknown\" rate and the bias scores stand beside it.")
    else:
        what = ("BBQ's primary metric in this file is ½(ambig + disambig), as in every file before 2026-12-04 (since "
                "then disambiguated accuracy, which no context-blind bonus on \"unknown\" can raise).")
    lines = [what, f"{GUARD_MARK} the BBQ gain does not count: disambiguated accuracy is not shown non-inferior to no "
             "steering, or ambiguous accuracy is below no steering's by more than the margin (BBQ abstention guard "
             "below)."]
    change = report.get("primary_change")
    if change:
        lines.append(f"This file was re-scored from BBQ's earlier primary ({change['from']}) to {change['to']} on "
                     f"{change['date']}: per-question scores, means, intervals and the guard are recomputed from the "
                     "stored per-question test answers (or their correctness), but every dev selection (each "
                     f"method's chosen setting, MAT-Steer's training setting, the best baseline) was made under "
                     f"{change['dev_selection']}, since the dev trials cannot be re-scored without the model.")
        # Rows only extended with more seeds kept the setting they chose when first added.
        later = [m for a in report.get("additions", []) if (a.get("dev_primary") or {}).get("bbq") == change["to"]
                 for m in a["methods"] if m not in a.get("extended", ())]
        if later:
            names = ", ".join(report["methods"][m].get("label", m) for m in later if m in report["methods"])
            lines.append(f"Rows added after the change chose their setting on dev under {change['to']}: {names}.")
    return lines


def _metric_mean(entry: Mapping[str, Any], task: str, metric: str) -> float | None:
    """A method's mean of ``test[task][metric]`` (None where absent or undefined)."""
    v = _ms(entry.get("test", {}).get(task, {}).get(metric))
    return None if v is None else v[0]


def bbq_verdicts(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method, BBQ's abstention-guard verdict: ``verdict`` (``ok``, ``abstaining``, ``over-answering``,
    ``inferior``, ``unproven``, ``reference`` for no steering, or ``unchecked``), ``disambig_diff`` (disambiguated
    accuracy minus no steering's), ``low`` (the lower bound of its cluster interval, None where not recorded),
    ``ambig_diff`` / ``ambig_low`` (the same for ambiguous accuracy) and ``source``.

    From ``report["bbq_guard"]`` where the report has it (``source`` ``"interval"``). An older ``eval.json`` has
    no answers and no clusters, only each method's mean accuracies: there a point difference below ``−margin``
    already fails non-inferiority (a percentile interval's lower bound lies below its point estimate): on
    disambiguated accuracy ``"abstaining"`` / ``"inferior"``, on ambiguous accuracy ``"over-answering"``; while a
    point difference above it cannot be checked (``"unchecked"``, ``source`` ``"point"``)."""
    methods = report.get("methods", {})
    guard = report.get("bbq_guard")
    out: dict[str, dict[str, Any]] = {}
    if guard:
        for name, g in guard.items():
            ni, amb = g.get("disambig_vs_none"), g.get("ambig_vs_none")
            out[name] = {"verdict": g.get("verdict", "unchecked"), "disambig_diff": ni["mean_diff"] if ni else None,
                         "low": ni["low"] if ni else None, "ambig_diff": amb["mean_diff"] if amb else None,
                         "ambig_low": amb["low"] if amb else None, "source": "interval", "margin": g.get("margin")}
        return out
    if "none" not in methods:
        return out
    ref_d, ref_a = _metric_mean(methods["none"], "bbq", "disambig"), _metric_mean(methods["none"], "bbq", "ambig")
    for name, entry in methods.items():
        d, a = _metric_mean(entry, "bbq", "disambig"), _metric_mean(entry, "bbq", "ambig")
        if name == "none":
            out[name] = {"verdict": "reference", "disambig_diff": None, "low": None, "ambig_diff": None,
                         "ambig_low": None, "source": "point", "margin": DEFAULT_MARGIN}
            continue
        if d is None or a is None or ref_d is None or ref_a is None:
            continue
        diff, amb = d - ref_d, a - ref_a
        if diff >= -DEFAULT_MARGIN:
            verdict = "over-answering" if amb < -DEFAULT_MARGIN else "unchecked"
        else:
            verdict = "abstaining" if amb > 0 else "inferior"
        out[name] = {"verdict": verdict, "disambig_diff": diff, "low": None, "ambig_diff": amb, "ambig_low": None,
                     "source": "point", "margin": DEFAULT_MARGIN}
    return out


def _ci_pct(ci: Mapping[str, Any] | None, digits: int = 1) -> str:
    """A single statistic with its interval, in points: ``v [low, high]``; n/a where undefined."""
    if not ci:
        return "n/a"
    return f"{ci['mean_diff'] * 100:.{digits}f} [{ci['low'] * 100:.{digits}f}, {ci['high'] * 100:.{digits}f}]"


def guard_lines(report: Mapping[str, Any]) -> list[str]:
    """BBQ's abstention guard: per method the ambiguous and disambiguated accuracy and "unknown" rate, the bias
    scores, disambiguated and ambiguous accuracy minus no steering's and the verdict (with intervals where the
    report has the answers; from the stored means otherwise)."""
    verdicts = bbq_verdicts(report)
    if not verdicts:
        return []
    methods, guard = report["methods"], report.get("bbq_guard")
    margin = next((v["margin"] for v in verdicts.values() if v.get("margin") is not None), DEFAULT_MARGIN)
    head = (f"BBQ abstention guard: a BBQ gain counts only where disambiguated accuracy is non-inferior to no "
            f"steering (the lower bound of the cluster-bootstrap 95% interval of the difference at least "
            f"−{margin * 100:g} points) and ambiguous accuracy is too; otherwise the row is flagged {GUARD_MARK}: "
            "\"over-answering\" where ambiguous accuracy (the share of ambiguous questions answered \"unknown\") is "
            "below no steering's by more than the margin while disambiguated accuracy is not (fewer \"unknown\" "
            "answers whatever the context: the shift that can raise disambiguated accuracy, the primary), "
            "\"unproven\" where the disambiguated point difference is within the margin but the interval is too "
            "wide, \"abstaining\" where it is below it while more ambiguous questions are answered \"unknown\" than "
            "without steering (a move to \"unknown\" whatever the context), \"inferior\" otherwise. Disambiguated "
            "accuracy, BBQ's primary metric, is the BBQ number no context-blind bonus on \"unknown\" can raise "
            "(docs/eval-schema.md). Points")
    lines = [""]
    if guard:
        lines += [head + ", with 95% cluster-bootstrap intervals (BBQ templates, seeds pooled):", "",
                  "| method | ambig accuracy (= \"unknown\" rate) | disambig accuracy | disambig \"unknown\" rate | "
                  "s_DIS (×100) | s_AMB (×100) | disambig minus no steering | ambig minus no steering | verdict |",
                  "|---" * 9 + "|"]
        for name, g in in_table_order(guard):
            c, v = g.get("conditions", {}), verdicts.get(name, {})
            amb, dis = c.get("ambig", {}), c.get("disambig", {})  # an older eval.json: accuracies alone
            cells = [_ci_pct(amb.get("accuracy")), _ci_pct(dis.get("accuracy")), _ci_pct(dis.get("unknown_rate")),
                     _ci_pct(dis.get("s_dis")), _ci_pct(amb.get("s_amb"))]
            cells += [_ci_cell(g[k]) if g.get(k) else "n/a" for k in ("disambig_vs_none", "ambig_vs_none")]
            cells.append(_verdict_text(v))
            lines.append(f"| {methods[name]['label']} | " + " | ".join(cells) + " |")
        return lines
    lines += [head + ". This eval.json has no per-question answers or clusters, so only the stored mean accuracies: "
              "a point difference below the margin already fails (the interval's lower bound lies below it); one "
              "above it is unchecked (and does not count either):", "",
              "| method | ambig accuracy (= \"unknown\" rate) | disambig accuracy | disambig minus no steering "
              "(point) | ambig minus no steering (point) | verdict |", "|---|---|---|---|---|---|"]
    for name, v in in_table_order(verdicts):
        e = methods[name]
        diffs = ["n/a" if v.get(k) is None else f"{v[k] * 100:+.2f}" for k in ("disambig_diff", "ambig_diff")]
        lines.append(f"| {e['label']} | {_short(e['test']['bbq'].get('ambig'))} | "
                     f"{_short(e['test']['bbq'].get('disambig'))} | {diffs[0]} | {diffs[1]} | {_verdict_text(v)} |")
    return lines


def _verdict_text(v: Mapping[str, Any]) -> str:
    """A guard verdict as table text."""
    verdict = v.get("verdict", "n/a")
    return f"{GUARD_MARK} {verdict}" if verdict in FLAGGED else verdict


def _control_references(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, test entry) of the constant answer and of every temperature control the report has."""
    refs: list[tuple[str, Mapping[str, Any]]] = []
    const = report.get("reference", {}).get("constant")
    if const:
        refs.append(("constant", const["test"]))
    for name in TEMPERATURE_CONTROLS:
        if name in report.get("methods", {}):
            refs.append((report["methods"][name]["label"], report["methods"][name]["test"]))
    return refs


def control_gain_lines(report: Mapping[str, Any], tasks: Sequence[str]) -> list[str]:
    """Every non-control method's gain, per attribute task's primary metric and on the mean, over the better (per
    column) of the constant answer and the temperature controls (those present: an older eval.json has none).
    Where BBQ's guard flags a method its BBQ gain does not count: the guarded mean replaces it by
    ``min(gain, 0)``."""
    refs = _control_references(report)
    if not refs:
        return []
    verdicts = bbq_verdicts(report) if "bbq" in tasks else {}
    keys, bbq = [*tasks, "mean"], primary_of(report, "bbq")

    def value(test: Mapping[str, Any], key: str) -> float | None:
        v = _ms(test.get(key) if key == "mean" else test.get(key, {}).get(primary_of(report, key)))
        return None if v is None else v[0]

    best: dict[str, tuple[float, str]] = {}
    for key in keys:
        options = [(v, label) for label, test in refs if (v := value(test, key)) is not None]
        if options:
            best[key] = max(options, key=lambda o: o[0])
    has_temperature = any(n in report.get("methods", {}) for n in TEMPERATURE_CONTROLS)
    what = ("the better of the constant answer and the temperature controls" if has_temperature else
            "the constant answer (this eval.json has no temperature control)")
    lines = ["", f"Gain over {what}, points, per task's primary metric (better reference per column: "
             + ", ".join(f"{_task_header(k, bbq)} {best[k][1]} {best[k][0] * 100:.2f}" for k in keys if k in best)
             + f"); guarded mean: the mean of the per-task gains with the BBQ gain counted as at most 0 where the "
             f"row is flagged {GUARD_MARK}:", "",
             "| method | " + " | ".join(_task_header(k, bbq) for k in keys) + " | guarded mean |",
             "|---" * (len(keys) + 2) + "|"]
    for name, entry in in_table_order(report["methods"]):
        if name in CONTROLS:
            continue
        gains = {k: v - best[k][0] for k in keys if k in best and (v := value(entry["test"], k)) is not None}
        flagged = verdicts.get(name, {}).get("verdict") in FLAGGED
        cells = [(f"{gains[k] * 100:+.2f}" + (f" {GUARD_MARK}" if k == "bbq" and flagged else "")) if k in gains
                 else "n/a" for k in keys]
        task_gains = [gains[t] for t in tasks if t in gains]
        if len(task_gains) == len(tasks):
            guarded = [min(g, 0.0) if t == "bbq" and flagged else g for t, g in zip(tasks, task_gains)]
            cells.append(f"{sum(guarded) / len(guarded) * 100:+.2f}")
        else:
            cells.append("n/a")
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return lines


def _paper_lines() -> list[str]:
    """The paper's Table 1 (and Table 4's uniform-gates row), for orientation."""
    lines = ["", "Paper, Llama-3.1-8B, Table 1 (for orientation only; another model, other splits, and plain "
             "ToxiGen / BBQ accuracy rather than our preference and disambiguated metrics):", "",
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
