"""The paper's tables and figures beside ours, from saved results only (no model passes): ``make paper``.

Inputs: a results folder (``results/reference/``) with ``eval.json`` (the whole-test-split comparison, Table 1),
``truthfulqa_generation.json`` (BLEU / ROUGE-L accuracy, Fig. 5) and ``toxicity.json`` (generation toxicity, Table
2's toxicity-reduction row); :func:`load_paper_results` reads whichever exist. The paper's numbers are :data:`PAPER`:
Llama-3.1-8B only, each item naming the paper's table or figure (Nguyen et al., ACL 2025, arXiv:2502.12446) it was
transcribed from. None of our numbers is written here: every one is read from the results.

The steps are small pure functions: results -> :class:`Comparison` (:func:`table1`, :func:`fig5`,
:func:`table2_toxicity`) -> markdown (:func:`comparison_markdown`) or a figure (:func:`plot_comparison`); the paper
items without a committed result become :class:`Pending` rows (:func:`pending_items`) with the command that would
produce them. :func:`paper_markdown` and :func:`paper_figures` assemble everything; :func:`write_paper` writes
``paper.md`` and the PNGs (``matsteer paper``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from matsteer.errors import ConfigError
from matsteer.eval.config import METHOD_LABELS, METHODS
from matsteer.eval.tasks import PRIMARY
from matsteer.files import read_json, source_root
from matsteer.viz.style import PALETTE, new_figure, save_figure, style

__all__ = [
    "EVAL_FILE",
    "GENERATION_FILE",
    "NOT_BUILT",
    "NOT_RERUN",
    "PAPER",
    "PAPER_METHODS",
    "TOXICITY_FILE",
    "Cell",
    "Comparison",
    "Direction",
    "PaperItem",
    "PaperResults",
    "Pending",
    "Row",
    "comparison_markdown",
    "fig5",
    "load_paper_results",
    "paper_comparisons",
    "paper_figures",
    "paper_markdown",
    "pending_items",
    "pending_markdown",
    "plot_comparison",
    "sources_markdown",
    "table1",
    "table2_toxicity",
    "write_paper",
]

EVAL_FILE = "eval.json"
GENERATION_FILE = "truthfulqa_generation.json"
TOXICITY_FILE = "toxicity.json"

#: How the paper's figures stand beside ours: hatched, grey, labelled with the model they come from.
PAPER_LABEL = "paper, Llama-3.1-8B"
_OURS_COLOR = PALETTE[0]
_PAPER_COLOR = (0.72, 0.72, 0.72)


# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers


@dataclass(frozen=True)
class PaperItem:
    """One table or figure of the paper and the Llama-3.1-8B numbers it reports.

    key: the file stem and anchor (``table1``); name: the paper's label (``Table 1``); title: what it shows;
    section: where the numbers were transcribed from (the paper's table or figure)
    claim: what the paper concludes from it; columns: its column headers; rows: ``(row name, one value
    per column)`` in the paper's order, None where the paper gives no value; unit: of the values; caveat: what the
    paper leaves unsaid or gets wrong about this item.
    """

    key: str
    name: str
    title: str
    section: str
    claim: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]
    unit: str = "%"
    caveat: str = ""
    model: str = "Llama-3.1-8B"

    def row_names(self) -> list[str]:
        return [name for name, _ in self.rows]

    def value(self, row: str, column: int = 0) -> float | None:
        """The paper's value of ``row`` in column ``column`` (None where it gives none or has no such row)."""
        return next((values[column] for name, values in self.rows if name == row), None)


_QA = ("TruthfulQA", "ToxiGen", "BBQ")

#: The paper's Llama-3.1-8B numbers per table / figure (arXiv 2502.12446v2, ACL 2025), in the paper's order.
PAPER: dict[str, PaperItem] = {item.key: item for item in (
    PaperItem(
        "table1", "Table 1", "QA accuracy per method (TruthfulQA MC2 / ToxiGen / BBQ)",
        "paper Table 1 (Llama-3.1-8B, layer 14)", "MAT-Steer is the best row in every column, "
        "3 points above the strongest baseline (LITO) on average, and every method improves on the base model.",
        _QA, (
            ("Base", (49.91, 48.10, 51.77)), ("ICL", (55.32, 51.26, 56.46)), ("SFT", (54.02, 55.51, 57.29)),
            ("DPO", (56.10, 55.94, 57.51)), ("Merge", (53.26, 54.65, 55.38)), ("RAdapt", (55.09, 55.02, 56.81)),
            ("ITI", (52.68, 52.55, 53.45)), ("ICV", (55.21, 53.61, 54.86)), ("NL-ITI", (56.67, 54.73, 56.46)),
            ("LITO", (58.63, 54.08, 58.14)), ("MAT-Steer", (61.94, 57.59, 60.32)),
        ),
        caveat="ToxiGen and BBQ are 'multiple-choice accuracy' in the paper; how the options are built and scored "
               "is not described. No seeds or variance are reported."),
    PaperItem(
        "table2_toxicity", "Table 2", "toxicity reduction (the ParaDetox gate analysis's last row)",
        "paper Table 2", "Steering with MAT-Steer reduces the toxicity of toxic inputs by 86%.",
        ("toxicity change (relative, %)",), (("MAT-Steer", (-86.0,)),),
        caveat="Measured on ParaDetox toxic sentences (the ICV protocol); the toxicity classifier is not stated."),
    PaperItem(
        "table2_gates", "Table 2", "ParaDetox gate analysis (gates and intervened tokens)",
        "paper Table 2", "The toxicity gate opens on toxic text and stays shut on non-toxic text, "
        "and the other attributes' gates stay low on both.",
        ("toxic", "non-toxic"), (
            ("mean toxicity gate", (0.61, 0.08)), ("mean gate of the other attributes", (0.14, 0.12)),
            ("mean # intervened tokens", (3.9, 0.6)),
        ), unit="gate value / tokens"),
    PaperItem(
        "table3", "Table 3", "loss-component ablation (TruthfulQA MC2)", "paper Table 3",
        "Every term of the objective helps: each added term raises MC2 over alignment alone and removing any term "
        "lowers it below the full objective.", ("TruthfulQA",), (
            ("Base", (49.91,)), ("+ Alignment (MMD only)", (53.82,)), ("+ Align + Pos", (55.48,)),
            ("+ Align + Sparse", (56.73,)), ("+ Align + Orth", (54.37,)), ("w/o Pos", (57.37,)),
            ("w/o Sparse", (58.08,)), ("w/o Orth", (59.69,)), ("w/o Normalization", (59.88,)), ("Full", (61.94,)),
        )),
    PaperItem(
        "table4", "Table 4", "which tokens to steer", "paper Table 4",
        "Learned gating beats steering random tokens, the last prompt token or all tokens uniformly.", _QA, (
            ("Base", (54.06, 52.27, 56.71)), ("Random tokens", (54.37, 53.63, 55.24)),
            ("Last prompt token only", (56.14, 52.38, 57.04)), ("All tokens (uniform)", (58.09, 55.92, 59.74)),
            ("MAT-Steer gating", (61.94, 57.59, 60.32)),
        ), caveat="The caption says Llama-3.1-8B, but the Base row equals the paper's Qwen2.5-7B base row."),
    PaperItem(
        "table5", "Table 5", "HH-RLHF win rates of MAT-Steer (GPT-4o judge)", "paper Table 5",
        "MAT-Steer's generations win against ICL, SFT and LITO on HH-RLHF.", ("MAT-Steer win rate",), (
            ("vs ICL", (67.07,)), ("vs SFT", (62.35,)), ("vs LITO", (59.12,)),
        )),
    PaperItem(
        "table9", "Table 9", "MAT-Steer combined with other methods", "paper Table 9",
        "MAT-Steer adds to ICL, SFT and DPO: each combination beats the method alone (Table 1's rows).", _QA, (
            ("ICL + MAT-Steer", (62.66, 58.34, 63.49)), ("SFT + MAT-Steer", (61.50, 62.83, 64.41)),
            ("DPO + MAT-Steer", (63.53, 63.09, 64.57)),
        )),
    PaperItem(
        "fig4", "Fig. 4", "data efficiency (TruthfulQA)", "paper Fig. 4",
        "With 10% of the TruthfulQA training data MAT-Steer beats SFT and DPO trained on all of it.",
        ("TruthfulQA",), (
            ("MAT-Steer, 10% of the training data", (60.05,)), ("DPO, 100%", (55.98,)), ("SFT, 100%", (54.12,)),
        ), caveat="Only these three points are given in the text; the curves and their x-grid were not found."),
    PaperItem(
        "fig5", "Fig. 5", "TruthfulQA open-ended generation (BLEU accuracy)", "paper Fig. 5",
        "MAT-Steer keeps generation fluent and truthful: its BLEU accuracy is above SFT's and ITI's.",
        ("BLEU accuracy", "ROUGE-L accuracy"), (
            ("MAT-Steer", (45.97, None)), ("SFT", (43.83, None)), ("ITI", (41.58, None)),
        ), caveat="The figure's other bars and any ROUGE-L numbers were not found."),
    PaperItem(
        "fig7", "Fig. 7", "number of attributes (HelpSteer win rate)", "paper Fig. 7",
        "MAT-Steer's margin over the baselines grows with the number of attributes (1 to 4).",
        ("margin growth, 1 to 4 attributes",), (("vs SFT", (5.65,)), ("vs ITI", (8.98,))), unit="points",
        caveat="The point values and which baselines are plotted were not found."),
)}

#: The paper's method rows and our method keys in ``eval.json`` (None: not built here, see :data:`NOT_BUILT`).
PAPER_METHODS: dict[str, str | None] = {
    "Base": "none", "ICL": "icl", "SFT": "lora_sft", "DPO": "lora_dpo", "Merge": None, "RAdapt": None,
    "ITI": "iti", "ICV": "icv", "NL-ITI": "nl_iti", "LITO": None, "MAT-Steer": "mat_steer",
}

#: Why a paper row has no method here (docs/evaluation.md, "Not built").
NOT_BUILT: dict[str, str] = {
    "Merge": "not built: buildable from the LoRA code (one adapter per attribute merged with peft's "
             "add_weighted_adapter); not yet done",
    "RAdapt": "not built: its router is not specified well enough to rebuild, and a router over per-task test sets "
              "would learn the data set's identity",
    "LITO": "not built: it learns a per-question strength from judged generations and may abstain; there is no "
            "judge here and MC metrics cannot score an abstention",
}

#: Our task per Table 1 column, and how our measure differs from the paper's (docs/evaluation.md, Tasks).
_TABLE1_TASKS = ("truthfulqa", "toxigen_pref", "bbq")
_MEASURE_NOTES = {
    "truthfulqa": "TruthfulQA MC2 as the paper (summed answer-token log-probs); the same measure.",
    "toxigen_pref": "ToxiGen here is a preference between a benign and a toxic statement about the same group "
                    "(chance 50%), not the paper's unspecified multiple-choice accuracy.",
    "bbq": "BBQ here is disambiguated accuracy (the one BBQ number a context-blind 'unknown' cannot raise; constant "
           "answer 50%), not the paper's plain accuracy over all questions.",
}


# ---------------------------------------------------------------------------------------------------------------
# What the comparison is made of


@dataclass(frozen=True)
class Cell:
    """One paper value beside ours, in the item's unit. ours / std: mean and std over seeds (None: absent);
    seeds: how many; missing: why ours is absent ('' when present)."""

    paper: float | None
    ours: float | None = None
    std: float | None = None
    seeds: int | None = None
    missing: str = ""


@dataclass(frozen=True)
class Row:
    """A paper row: its name, our method's key ('' when none) and one :class:`Cell` per column."""

    name: str
    key: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Direction:
    """One of the paper's directional claims checked on ours: ``claim`` in ``column``, the paper's answer, ours
    (None: ours cannot say), and the numbers behind them."""

    claim: str
    column: str
    paper: bool | None
    ours: bool | None
    evidence: str

    @property
    def agrees(self) -> bool | None:
        return None if self.paper is None or self.ours is None else self.paper == self.ours


@dataclass(frozen=True)
class Comparison:
    """A paper item beside ours: the item, our rows, the directional checks, notes on the measures and the
    result file the numbers came from."""

    item: PaperItem
    rows: tuple[Row, ...]
    directions: tuple[Direction, ...]
    notes: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Pending:
    """A paper item with no committed result here: its status (:data:`NOT_RERUN` or "not built"), the detail
    (what the command writes and how it relates to the paper's, or why nothing builds it) and the command that
    would produce it ('' if none)."""

    item: PaperItem
    status: str
    detail: str
    command: str


@dataclass(frozen=True)
class PaperResults:
    """The committed results :func:`load_paper_results` found (None: the file is absent) and the folder they are in."""

    folder: Path
    eval: Mapping[str, Any] | None = None
    generation: Mapping[str, Any] | None = None
    toxicity: Mapping[str, Any] | None = None
    files: tuple[str, ...] = field(default=())


def load_paper_results(folder: str | Path) -> PaperResults:
    """The results in ``folder`` (``eval.json``, ``truthfulqa_generation.json``, ``toxicity.json``, each optional).

    A relative folder not found from the working directory is looked up under the repository root, since the
    notebooks run from ``notebooks/`` in JupyterLab. Raises ConfigError when the folder holds none of the three.
    """
    path = Path(folder).expanduser()
    if not path.is_absolute() and not path.is_dir() and (source_root() / path).is_dir():
        path = source_root() / path
    found = {name: read_json(path / name) for name in (EVAL_FILE, GENERATION_FILE, TOXICITY_FILE)
             if (path / name).is_file()}
    if not found:
        raise ConfigError(f"{folder} holds none of {EVAL_FILE}, {GENERATION_FILE}, {TOXICITY_FILE}; the committed "
                          "ones are in results/reference (make paper-results re-runs them).")
    return PaperResults(path, found.get(EVAL_FILE), found.get(GENERATION_FILE), found.get(TOXICITY_FILE),
                        tuple(found))


# ---------------------------------------------------------------------------------------------------------------
# Results -> rows


def _pct(score: Any) -> tuple[float | None, float | None, int | None]:
    """(mean %, std %, n) of a ``{"mean", "std", "n"}`` score (Nones when it is absent)."""
    if not isinstance(score, Mapping) or score.get("mean") is None:
        return None, None, None
    std = score.get("std")
    return float(score["mean"]) * 100, None if std is None else float(std) * 100, score.get("n")


def _absent(key: str | None, paper_name: str, source: str, add_command: str) -> str:
    """Why our row for ``paper_name`` is missing: not built (with the reason) or built but not in ``source``."""
    if key is None:
        return NOT_BUILT.get(paper_name, "not built")
    if key in METHODS:
        return f"not in {source} (built: {add_command.format(key=key)})"
    return f"not in {source}"


def _diff_text(d: float, low: float | None = None, high: float | None = None) -> str:
    ci = "" if low is None or high is None else f" [{low:+.2f}, {high:+.2f}]"
    return f"{d:+.2f}{ci}"


def _interval(report: Mapping[str, Any], group: str, key: str, task: str) -> Mapping[str, Any] | None:
    found = report.get("intervals", {}).get(group, {}).get(key, {}).get(task)
    return found if isinstance(found, Mapping) and found.get("mean_diff") is not None else None


def _ours_direction(ours_diff: float | None, interval: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """Our side of a direction: up or not, and its points (with the 95% interval and whether it excludes 0)."""
    if interval is not None:
        d, low, high = (float(interval[k]) * 100 for k in ("mean_diff", "low", "high"))
        sure = "excludes 0" if low > 0 or high < 0 else "includes 0"
        return d > 0, f"ours {_diff_text(d, low, high)} (95% CI {sure})"
    if ours_diff is None:
        return None, "ours n/a"
    return ours_diff > 0, f"ours {_diff_text(ours_diff)}"


def table1(report: Mapping[str, Any], source: str = EVAL_FILE) -> Comparison:
    """Table 1 beside the comparison ``report`` (an ``eval.json``): each paper row, our method's primary metric
    per task (mean ± std over seeds, %), and the paper's directions checked on ours (method above Base, MAT-Steer
    above the strongest baseline, MAT-Steer the top row). A method missing from the report is a missing cell."""
    item = PAPER["table1"]
    methods = report.get("methods", {})
    primary = {**PRIMARY, **report.get("primary", {})}
    rows = []
    for name, values in item.rows:
        key = PAPER_METHODS[name]
        entry = methods.get(key) if key else None
        if entry is None:
            why = _absent(key, name, source, "matsteer compare --reference --add {key}")
            rows.append(Row(name, key or "", tuple(Cell(v, missing=why) for v in values)))
            continue
        cells = []
        for task, paper in zip(_TABLE1_TASKS, values):
            mean, std, n = _pct(entry.get("test", {}).get(task, {}).get(primary[task]))
            cells.append(Cell(paper, mean, std, n, "" if mean is not None else f"no {task} score in {source}"))
        rows.append(Row(name, key or "", tuple(cells)))
    return Comparison(item, tuple(rows), tuple(_table1_directions(item, rows, report)),
                      tuple(_MEASURE_NOTES[t] for t in _TABLE1_TASKS), source)


def _table1_directions(item: PaperItem, rows: Sequence[Row], report: Mapping[str, Any]) -> list[Direction]:
    """Method above Base per task; MAT-Steer above the strongest baseline; MAT-Steer the top row."""
    by_name = {r.name: r for r in rows}
    base = by_name["Base"]
    out = []
    for r in rows:
        if r.name == "Base" or not r.key:  # a row not built here has nothing to check
            continue
        for j, (task, column) in enumerate(zip(_TABLE1_TASKS, item.columns)):
            paper_d = _sub(r.cells[j].paper, base.cells[j].paper)
            ours_d = _sub(r.cells[j].ours, base.cells[j].ours)
            ours, evidence = _ours_direction(ours_d, _interval(report, "vs_none", r.key, task))
            if r.cells[j].ours is None:
                ours, evidence = None, f"ours {r.cells[j].missing}"
            if paper_d is None:
                continue
            out.append(Direction(f"{r.name} above Base", column, paper_d > 0,
                                 ours, f"paper {_diff_text(paper_d)}; {evidence}"))
    out += _best_baseline_directions(item, by_name["MAT-Steer"], report)
    for j, column in enumerate(item.columns):
        paper_top = max(item.row_names(), key=_column_value(item, j))
        present = [r for r in rows if r.cells[j].ours is not None]
        ours_top = max(present, key=_ours_value(j)).name if present else None
        out.append(Direction("MAT-Steer the top row", column, paper_top == "MAT-Steer",
                             None if ours_top is None else ours_top == "MAT-Steer",
                             f"paper top: {paper_top}; ours top of the {len(present)} rows we have: {ours_top}"))
    return out


def _best_baseline_directions(item: PaperItem, mat: Row, report: Mapping[str, Any]) -> list[Direction]:
    """MAT-Steer minus the strongest baseline per task: the paper's (LITO, its best baseline row) against ours
    (the report's best baseline by dev, with the interval the report holds)."""
    paper_best = max((n for n in item.row_names() if n not in ("Base", "MAT-Steer")),
                     key=lambda n: sum(item.value(n, j) or 0.0 for j in range(len(item.columns))))
    best = report.get("best_baseline", {}).get("name")
    best_entry = report.get("methods", {}).get(best, {}) if best else {}
    primary = {**PRIMARY, **report.get("primary", {})}
    out = []
    for j, (task, column) in enumerate(zip(_TABLE1_TASKS, item.columns)):
        paper_d = _sub(item.value("MAT-Steer", j), item.value(paper_best, j))
        if best is None:
            ours, evidence = None, "ours: no best baseline in the report"
        else:
            theirs = _pct(best_entry.get("test", {}).get(task, {}).get(primary[task]))[0]
            ours, evidence = _ours_direction(_sub(mat.cells[j].ours, theirs),
                                             _interval(report, "vs_best_baseline", "mat_steer", task))
            evidence = f"vs {METHOD_LABELS.get(best, best)} (best by dev): {evidence}"
        out.append(Direction("MAT-Steer above the strongest baseline", column,
                             None if paper_d is None else paper_d > 0, ours,
                             f"paper vs {paper_best} {_diff_text(paper_d or 0.0)}; {evidence}"))
    return out


def _column_value(item: PaperItem, j: int) -> Callable[[str], float]:
    """Sort key: the paper's value of a row in column ``j`` (rows without one last)."""
    return lambda name: -np.inf if item.value(name, j) is None else float(item.value(name, j) or 0.0)


def _ours_value(j: int) -> Callable[[Row], float]:
    """Sort key: our value of a row in column ``j`` (rows without one last)."""
    return lambda row: -np.inf if row.cells[j].ours is None else float(row.cells[j].ours or 0.0)


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def fig5(generation: Mapping[str, Any], source: str = GENERATION_FILE) -> Comparison:
    """Fig. 5 beside a TruthfulQA generation report (``truthfulqa_generation.json``): BLEU and ROUGE-L accuracy
    (%) of each paper method we built (the paper gives BLEU for MAT-Steer, SFT and ITI only), and whether
    MAT-Steer is above SFT and ITI on ours."""
    item = PAPER["fig5"]
    summary = generation.get("summary", {})
    rows = []
    for name, key in PAPER_METHODS.items():
        if key is None:
            continue
        paper = (item.value(name, 0), item.value(name, 1))
        if key not in summary:
            why = _absent(key, name, source, "matsteer truthfulqa-generation --reference --add --methods {key}")
            rows.append(Row(name, key, tuple(Cell(p, missing=why) for p in paper)))
            continue
        cells = [Cell(p, *_pct(summary[key].get(metric))) for p, metric in zip(paper, ("bleu_acc", "rougeL_acc"))]
        rows.append(Row(name, key, tuple(cells)))
    by_name = {r.name: r for r in rows}
    mat = by_name["MAT-Steer"].cells[0]
    directions = []
    for other in ("SFT", "ITI"):
        theirs = by_name[other].cells[0]
        paper_d, ours_d = _sub(mat.paper, theirs.paper), _sub(mat.ours, theirs.ours)
        evidence = (f"ours {_diff_text(ours_d)} (means over seeds)" if ours_d is not None
                    else f"ours: {other} {theirs.missing}")
        directions.append(Direction(f"MAT-Steer above {other}", item.columns[0],
                                    None if paper_d is None else paper_d > 0, None if ours_d is None else ours_d > 0,
                                    f"paper {_diff_text(paper_d or 0.0)}; {evidence}"))
    none_iv = generation.get("vs_none", {}).get("mat_steer")
    if isinstance(none_iv, Mapping):
        ours, evidence = _ours_direction(None, none_iv)
        directions.append(Direction("MAT-Steer above Base", item.columns[0], None, ours,
                                    f"paper: Base not reported; {evidence}"))
    notes = ("Ours: greedy answers of up to "
             f"{generation.get('config', {}).get('max_new_tokens', '?')} tokens to the bare question "
             f"({generation.get('config', {}).get('prompt_format', '?')} prompt), correct when the best BLEU "
             "(ROUGE-L) against a true reference beats the best against a false one, as the paper's BLEU accuracy.",)
    return Comparison(item, tuple(rows), tuple(directions), notes, source)


def table2_toxicity(toxicity: Mapping[str, Any], source: str = TOXICITY_FILE) -> Comparison:
    """Table 2's toxicity-reduction row beside a generation toxicity report (``toxicity.json``): each paper
    method's relative change of the mean P(toxic) of its continuations against no steering, %, and whether
    MAT-Steer reduces toxicity (also on the report's primary, on-topic non-toxicity, with its interval)."""
    item = PAPER["table2_toxicity"]
    summary = toxicity.get("summary", {})
    base = _pct(summary.get("none", {}).get("nontoxic"))[0]
    rows = []
    for name, key in PAPER_METHODS.items():
        if key is None or key == "none":
            continue
        paper = item.value(name, 0)
        if key not in summary or base is None:
            why = _absent(key, name, source, "matsteer toxicity --reference --add --methods {key}")
            if paper is not None or key in summary:
                rows.append(Row(name, key, (Cell(paper, missing=why),)))
            continue
        mean, std, n = _pct(summary[key].get("nontoxic"))
        # Toxicity is 1 - non-toxicity; its change relative to no steering's toxicity, in %.
        change = None if mean is None else (base - mean) / (100 - base) * 100
        spread = None if std is None else std / (100 - base) * 100
        rows.append(Row(name, key, (Cell(paper, change, spread, n),)))
    directions = []
    mat = next((r for r in rows if r.name == "MAT-Steer"), None)
    if mat is not None:
        ours_change = mat.cells[0].ours
        evidence = "ours n/a" if ours_change is None else f"ours {ours_change:+.1f}% mean P(toxic)"
        iv = toxicity.get("vs_none", {}).get("mat_steer")
        if isinstance(iv, Mapping):
            evidence += "; on-topic non-toxicity (primary) " + _ours_direction(None, iv)[1].removeprefix("ours ")
        directions.append(Direction("MAT-Steer reduces toxicity", item.columns[0], True,
                                    None if ours_change is None else ours_change < 0, f"paper -86%; {evidence}"))
    cfg = toxicity.get("config", {})
    notes = (f"Ours: greedy continuations (up to {cfg.get('max_new_tokens', '?')} tokens) of ToxiGen-style "
             "lists of hateful statements, scored by the repository's ToxiGen classifier (TF-IDF + logistic "
             "regression); toxicity = mean P(toxic). Not the paper's ParaDetox measure.",
             "A continuation that leaves the topic is not toxic either: the report's primary, on-topic "
             "non-toxicity, counts it as 0 (toxicity.md).")
    return Comparison(item, tuple(rows), tuple(directions), notes, source)


def paper_comparisons(results: PaperResults) -> dict[str, Comparison]:
    """``{item key: comparison}`` for every paper item ``results`` holds a result for, in the paper's order."""
    out = []
    if results.eval is not None:
        out.append(table1(results.eval))
    if results.toxicity is not None:
        out.append(table2_toxicity(results.toxicity))
    if results.generation is not None:
        out.append(fig5(results.generation))
    return {c.item.key: c for c in out}


#: The command that produces each paper item, what it writes and how it relates to the paper's (Makefile targets
#: reference / ablations / winrates; ``matsteer ablate --help``). An empty command: nothing builds it yet.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "table1": ("matsteer compare --reference", "results/reference/eval.json", "make reference"),
    "table2_toxicity": ("matsteer toxicity --reference", "results/reference/toxicity.json", ""),
    "fig5": ("matsteer truthfulqa-generation --reference", "results/reference/truthfulqa_generation.json", ""),
    "table2_gates": ("matsteer ablate paradetox_gates", "results/ablations/paradetox_gates.json",
                     "part of make ablations"),
    "table3": ("matsteer ablate components", "results/ablations/components.json", "part of make ablations"),
    "table4": ("matsteer ablate tokens", "results/ablations/tokens.json", "part of make ablations"),
    "fig4": ("matsteer ablate data_efficiency", "results/ablations/data_efficiency.json", "part of make ablations"),
    "fig7": ("matsteer ablate num_attributes", "results/ablations/num_attributes.json",
             "part of make ablations; QA accuracy over 1-4 attributes, not HelpSteer win rates"),
    "table5": ("matsteer winrates", "results/winrates.json",
               "make winrates; the default model judges (a weak judge) unless --judge-url names a stronger one"),
    "table9": ("", "", "no command combines MAT-Steer with ICL, SFT or DPO yet"),
}
NOT_RERUN = "not yet re-run on the current method"
_RESULT_FILES = {"table1": EVAL_FILE, "table2_toxicity": TOXICITY_FILE, "fig5": GENERATION_FILE}


def pending_items(results: PaperResults) -> list[Pending]:
    """The paper items with no committed result in ``results``, each with the command that would produce it."""
    out = []
    for key, item in PAPER.items():
        if key in _RESULT_FILES and _RESULT_FILES[key] in results.files:
            continue
        command, writes, note = _COMMANDS[key]
        if not command:
            out.append(Pending(item, "not built", note, ""))
            continue
        out.append(Pending(item, NOT_RERUN, "; ".join(filter(None, [f"writes {writes}", note])), command))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Rows -> markdown


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ours_text(cell: Cell, digits: int = 2) -> str:
    if cell.ours is None:
        return "missing"
    return f"{cell.ours:.{digits}f}" + ("" if cell.std is None else f" ± {cell.std:.{digits}f}")


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else "yes" if value else "no"


def comparison_markdown(comparison: Comparison, figure: str | None = None) -> str:
    """A paper item beside ours as markdown: the claim, the table (paper and ours per column, ours mean ± std over
    seeds), the directional checks, notes on the measures, and ``figure`` (a PNG path) when given."""
    item = comparison.item
    digits = 1 if "relative" in item.columns[0] else 2
    lines = [f"## {item.name}: {item.title}", "",
             f"**The paper's claim** ({item.section}): {item.claim}", ""]
    if item.caveat:
        lines += [f"Paper caveat: {item.caveat}", ""]
    header = ["paper row", "our row"]
    for column in item.columns:
        header += [f"{column}, paper ({item.model})", f"{column}, ours"]
    lines += ["| " + " | ".join(header + ["note"]) + " |", "|" + "---|" * (len(header) + 1)]
    for row in comparison.rows:
        cells = [row.name, METHOD_LABELS.get(row.key, row.key) if row.key else "–"]
        for cell in row.cells:
            cells += [_num(cell.paper, digits), _ours_text(cell, digits)]
        notes = dict.fromkeys(c.missing for c in row.cells if c.missing)
        lines.append("| " + " | ".join(cells + ["; ".join(notes) or ""]) + " |")
    seeds = sorted({c.seeds for r in comparison.rows for c in r.cells if c.seeds is not None})
    lines += ["", f"Ours: mean ± std over training seeds ({' or '.join(map(str, seeds)) or '?'} seeds per row; std 0 "
              f"where a method does not depend on the seed), from `{comparison.source}`."]
    if comparison.directions:
        agree = [d.agrees for d in comparison.directions if d.agrees is not None]
        lines += ["", f"**Direction** (does ours move the way the paper's does? {sum(agree)} of {len(agree)} "
                  "checks agree; points, ours with its 95% cluster-bootstrap interval where the result has one):",
                  "", "| claim | column | paper | ours | agrees | numbers |", "|---|---|---|---|---|---|"]
        for d in comparison.directions:
            lines.append(f"| {d.claim} | {d.column} | {_yes(d.paper)} | {_yes(d.ours)} | {_yes(d.agrees)} | "
                         f"{d.evidence} |")
    if comparison.notes:
        lines += ["", *(f"- {n}" for n in comparison.notes)]
    if figure:
        lines += ["", f"![{item.name}: ours beside the paper's]({figure})"]
    return "\n".join(lines)


def pending_markdown(pending: Sequence[Pending]) -> str:
    """The paper items without a result here: one row each (status and command), then the paper's numbers."""
    lines = ["## Not yet re-run here", "",
             "No numbers of ours exist for these items on the current method; the paper's are listed so the re-run "
             "has its target.", "", "| item | what | status | command | note |", "|---|---|---|---|---|"]
    for p in pending:
        lines.append(f"| {p.item.name} | {p.item.title} | {p.status} | "
                     f"{f'`{p.command}`' if p.command else 'none yet'} | {p.detail} |")
    for p in pending:
        item = p.item
        lines += ["", f"### {item.name}: {item.title}", "", f"**The paper's claim** ({item.section}): {item.claim}"
                  + (f" {item.caveat}" if item.caveat else ""), "",
                  "| paper row | " + " | ".join(f"{c} ({item.unit}, {item.model})" for c in item.columns) + " | ours |",
                  "|" + "---|" * (len(item.columns) + 2)]
        for name, values in item.rows:
            lines.append(f"| {name} | " + " | ".join(_num(v) for v in values) + f" | {p.status} |")
    return "\n".join(lines)


def _provenance_line(name: str, data: Mapping[str, Any]) -> str:
    prov = data.get("provenance", {})
    model = prov.get("model", {}).get("name", "?")
    seeds = prov.get("seeds") or data.get("config", {}).get("seeds") or []
    return (f"| `{name}` | {prov.get('git_commit', 'not recorded')} | {model} | "
            f"{', '.join(map(str, seeds)) or '–'} |")


def sources_markdown(results: PaperResults, results_label: str | None = None) -> str:
    """Where the numbers come from: the paper's (Llama-3.1-8B) and ours (each source file with the commit, model
    and seeds its provenance records)."""
    data = {EVAL_FILE: results.eval, GENERATION_FILE: results.generation, TOXICITY_FILE: results.toxicity}
    model = next((d.get("provenance", {}).get("model", {}).get("name") for d in data.values() if d), "?")
    lines = [f"Ours come from the committed results in `{results_label or results.folder}`, read as saved (no model "
             f"ran), on **{model}** (the embedded default model, far smaller than the paper's) with this "
             "repository's splits and measures. The paper's numbers are its **Llama-3.1-8B** numbers (Nguyen et al., "
             "ACL 2025, arXiv:2502.12446), each labelled with its table or figure. Read them side by side for "
             "direction, not level.", "", "| source file | provenance commit | model | seeds |", "|---|---|---|---|"]
    return "\n".join(lines + [_provenance_line(name, d) for name, d in data.items() if d is not None])


def paper_markdown(results: PaperResults, figures: Mapping[str, str] | None = None,
                   results_label: str | None = None) -> str:
    """``paper.md``: a header naming the source files and their provenance commits, a summary of every paper
    item (compared or not yet re-run), each comparison (with ``figures[item key]`` as its image) and the pending
    items with their commands."""
    figures = figures or {}
    found = list(paper_comparisons(results).values())
    pending = pending_items(results)
    lines = ["# The paper's tables and figures beside ours", "",
             "Generated by `matsteer paper` (`make paper`, `matsteer.viz.paper`). " + sources_markdown(
                 results, results_label),
             "", "| paper item | what | ours | directions that agree |", "|---|---|---|---|"]
    for c in found:
        agree = [d.agrees for d in c.directions if d.agrees is not None]
        lines.append(f"| {c.item.name} | {c.item.title} | `{c.source}` | {sum(agree)} of {len(agree)} |")
    for p in pending:
        lines.append(f"| {p.item.name} | {p.item.title} | {p.status} | – |")
    for c in found:
        lines += ["", comparison_markdown(c, figures.get(c.item.key))]
    if pending:
        lines += ["", pending_markdown(pending)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Rows -> figures


def plot_comparison(comparison: Comparison) -> Figure:
    """One panel per column: our value per paper row (solid bars, ± std over seeds) beside the paper's (hatched,
    labelled "paper, Llama-3.1-8B"); a row we do not have is marked "n/a" and the rows neither has are left out."""
    item = comparison.item
    ncols = len(item.columns)
    with style():
        fig, axes = new_figure(1, ncols, width=max(3.6, 0.42 * len(comparison.rows) + 1.0), height=3.6)
        for j, column in enumerate(item.columns):
            ax = axes[0, j]
            rows = [r for r in comparison.rows if r.cells[j].paper is not None or r.cells[j].ours is not None
                    or j == 0]
            x = np.arange(len(rows))
            ours = np.array([np.nan if r.cells[j].ours is None else r.cells[j].ours for r in rows])
            err = np.array([r.cells[j].std or 0.0 for r in rows])
            paper = np.array([np.nan if r.cells[j].paper is None else r.cells[j].paper for r in rows])
            ax.bar(x - 0.2, ours, 0.4, yerr=err if err.any() else None, capsize=3, color=_OURS_COLOR,
                   label="ours", edgecolor="white")
            ax.bar(x + 0.2, paper, 0.4, color=_PAPER_COLOR, hatch="///", edgecolor="0.35", label=PAPER_LABEL)
            for i, r in enumerate(rows):
                if r.cells[j].ours is None:
                    ax.annotate("n/a", (x[i] - 0.2, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                                fontsize=7, rotation=90, color="0.3")
            ax.axhline(0, color="0.3", linewidth=0.8)
            ax.set_xticks(x, [r.name for r in rows], rotation=40, ha="right")
            ax.set_ylabel(column if "%" in column else f"{column} ({item.unit})")
            # A column the paper gives no number for is ours alone: say so where the hatched bars would be.
            alone = "" if any(r.cells[j].paper is not None for r in rows) else " (paper: none)"
            ax.set_title(f"{item.name}: {column}{alone}")
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper center", ncols=2)
    return fig


def paper_figures(results: PaperResults) -> dict[str, Figure]:
    """``{"paper_<item key>": figure}`` for every comparison ``results`` holds."""
    return {f"paper_{key}": plot_comparison(c) for key, c in paper_comparisons(results).items()}


def write_paper(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/paper.md`` and one PNG per comparison from the results in ``results_dir``; returns the
    paths written (the markdown first)."""
    results = load_paper_results(results_dir)
    out = Path(out_dir)
    paths = []
    names = {}
    for name, fig in paper_figures(results).items():
        paths += save_figure(fig, name, out, formats=("png",))
        names[name.removeprefix("paper_")] = f"{name}.png"
    out.mkdir(parents=True, exist_ok=True)
    md = out / "paper.md"
    md.write_text(paper_markdown(results, names, str(results_dir)), encoding="utf-8")
    return [md, *paths]
