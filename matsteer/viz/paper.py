"""The paper's tables and figures beside ours, from saved results only (no model passes): ``make paper``.

Inputs: a results folder (``results/reference/``) with ``eval.json`` (the whole-test-split comparison, Table 1),
``truthfulqa_generation.json`` (BLEU / ROUGE-L accuracy, Fig. 5), ``toxicity.json`` (generation toxicity, Table
2's toxicity-reduction row) and ``ablations/<name>.json`` (:func:`matsteer.eval.ablations.run_ablations`: Table 2's
gates, Tables 3 and 4, Figs. 4 and 7, :data:`ABLATION_FILES`); :func:`load_paper_results` reads whichever exist.
The paper's numbers are :data:`PAPER`:
Llama-3.1-8B only, each item naming the paper's table or figure (Nguyen et al., ACL 2025, arXiv:2502.12446) it was
transcribed from. None of our numbers is written here: every one is read from the results.

The steps are small pure functions: results -> :class:`Comparison` (:func:`table1`, :func:`fig5`,
:func:`table2_toxicity`; from the ablation files :func:`table2_gates`, :func:`table3`, :func:`table4`, :func:`fig4`,
:func:`fig7`) -> markdown (:func:`comparison_markdown`) or a figure (:func:`paper_figure`: bars,
:func:`plot_comparison`, or Figs. 4 and 7's curves, :func:`plot_fig4`, :func:`plot_fig7`); the paper
items without a committed result become :class:`Pending` rows (:func:`pending_items`) with the command that would
produce them. :func:`paper_markdown` and :func:`paper_figures` assemble everything; :func:`write_paper` writes
``paper.md`` and the PNGs (``matsteer paper``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from matsteer.errors import ConfigError
from matsteer.eval.ablations import ROW_ORDER
from matsteer.eval.config import METHOD_LABELS, METHODS
from matsteer.eval.tasks import PRIMARY
from matsteer.files import read_json, source_root
from matsteer.viz.figures import figures_from_ablation
from matsteer.viz.style import PALETTE, new_figure, save_figure, style

__all__ = [
    "ABLATIONS_DIR",
    "ABLATION_FILES",
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
    "ablation_file",
    "comparison_markdown",
    "item_figure",
    "item_markdown",
    "fig4",
    "fig5",
    "fig7",
    "load_paper_results",
    "paper_comparisons",
    "paper_figure",
    "paper_figures",
    "paper_markdown",
    "pending_items",
    "pending_markdown",
    "plot_comparison",
    "plot_fig4",
    "plot_fig7",
    "sources_markdown",
    "table1",
    "table2_gates",
    "table2_toxicity",
    "table3",
    "table4",
    "write_paper",
]

EVAL_FILE = "eval.json"
GENERATION_FILE = "truthfulqa_generation.json"
TOXICITY_FILE = "toxicity.json"
#: The folder of the results folder holding the ablations (``matsteer ablate --out``), one ``<name>.json`` each.
ABLATIONS_DIR = "ablations"
#: The ablation (:data:`matsteer.eval.ablations.ABLATIONS`) each ablation-based paper item is read from.
ABLATION_FILES: dict[str, str] = {"table2_gates": "paradetox_gates", "table3": "components", "table4": "tokens",
                                  "fig4": "data_efficiency", "fig7": "num_attributes"}

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
#: The saved mean over the tasks (a result's ``"mean"`` entry) and its column.
MEAN = "mean"
_MEAN_COLUMN = "three-task mean"
_MEASURE_NOTES = {
    "truthfulqa": "TruthfulQA MC2 as the paper (summed answer-token log-probs); the same measure.",
    "toxigen_pref": "ToxiGen here is a preference between a benign and a toxic statement about the same group "
                    "(chance 50%), not the paper's unspecified multiple-choice accuracy.",
    "bbq": "BBQ here is disambiguated accuracy (the one BBQ number a context-blind 'unknown' cannot raise; constant "
           "answer 50%), not the paper's plain accuracy over all questions.",
    MEAN: "Three-task mean: the mean of our TruthfulQA MC2, ToxiGen preference and BBQ disambiguated accuracy "
          "(the paper gives none).",
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
    """The committed results :func:`load_paper_results` found (None: the file is absent), the saved ablations
    ``{name: saved result}`` and the folder they are in; files: the paths read, relative to the folder."""

    folder: Path
    eval: Mapping[str, Any] | None = None
    generation: Mapping[str, Any] | None = None
    toxicity: Mapping[str, Any] | None = None
    files: tuple[str, ...] = field(default=())
    ablations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def ablation_file(name: str) -> str:
    """Where ablation ``name`` is read from, relative to the results folder (``ablations/<name>.json``)."""
    return f"{ABLATIONS_DIR}/{name}.json"


def load_paper_results(folder: str | Path) -> PaperResults:
    """The results in ``folder`` (``eval.json``, ``truthfulqa_generation.json``, ``toxicity.json`` and the
    :data:`ABLATION_FILES` under ``ablations/``, each optional).

    A relative folder not found from the working directory is looked up under the repository root, since the
    notebooks run from ``notebooks/`` in JupyterLab. Raises ConfigError when the folder holds none of them.
    """
    path = Path(folder).expanduser()
    if not path.is_absolute() and not path.is_dir() and (source_root() / path).is_dir():
        path = source_root() / path
    names = (EVAL_FILE, GENERATION_FILE, TOXICITY_FILE, *map(ablation_file, ABLATION_FILES.values()))
    found = {name: read_json(path / name) for name in names if (path / name).is_file()}
    if not found:
        raise ConfigError(f"{folder} holds none of {EVAL_FILE}, {GENERATION_FILE}, {TOXICITY_FILE} or "
                          f"{ABLATIONS_DIR}/*.json; the committed ones are in results/reference (make paper-results "
                          "re-runs them).")
    ablations = {name: found[ablation_file(name)] for name in ABLATION_FILES.values() if ablation_file(name) in found}
    return PaperResults(path, found.get(EVAL_FILE), found.get(GENERATION_FILE), found.get(TOXICITY_FILE),
                        tuple(found), ablations)


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
    rows = [_method_row(name, PAPER_METHODS[name], values, report, _TABLE1_TASKS, source) for name, values in item.rows]
    return Comparison(item, tuple(rows), tuple(_table1_directions(item, rows, report)),
                      tuple(_MEASURE_NOTES[t] for t in _TABLE1_TASKS), source)


def _score_cell(paper: float | None, score: Any, task: str, source: str) -> Cell:
    """The paper's value beside a saved ``{"mean", "std", "n"}`` score (fraction, shown in %); missing if absent."""
    mean, std, n = _pct(score)
    return Cell(paper, mean, std, n, "" if mean is not None else f"no {task} score in {source}")


def _method_row(name: str, key: str | None, paper: Sequence[float | None], report: Mapping[str, Any],
                tasks: Sequence[str], source: str) -> Row:
    """Paper row ``name`` beside method ``key``'s test scores in a comparison ``report`` (an ``eval.json``): per
    task its primary metric (task :data:`MEAN`: the report's mean over the tasks), %. A method missing from the
    report gives missing cells saying why (not built, or the command that adds it)."""
    entry = report.get("methods", {}).get(key) if key else None
    if entry is None:
        why = _absent(key, name, source, "matsteer compare --reference --add {key}")
        return Row(name, key or "", tuple(Cell(v, missing=why) for v in paper))
    primary = {**PRIMARY, **report.get("primary", {})}
    test = entry.get("test", {})
    return Row(name, key or "", tuple(
        _score_cell(p, test.get(task) if task == MEAN else test.get(task, {}).get(primary[task]), task, source)
        for task, p in zip(tasks, paper)))


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


# ---------------------------------------------------------------------------------------------------------------
# The ablations (``<results>/ablations/<name>.json``) -> rows


#: Table 3's paper rows and our rows in ``components.json`` (:data:`matsteer.eval.ablations.COMPONENTS`).
_TABLE3_ROWS = {"Base": "Base", "+ Alignment (MMD only)": "MMD only", "+ Align + Pos": "+ Pos",
                "+ Align + Sparse": "+ Sparse", "+ Align + Orth": "+ Orth", "w/o Pos": "w/o Pos",
                "w/o Sparse": "w/o Sparse", "w/o Orth": "w/o Orth", "w/o Normalization": "w/o Normalization",
                "Full": "Full"}
#: Table 2's gate rows and our rows of ``paradetox_gates.json``'s table; its groups per paper column.
_GATE_ROWS = {"mean toxicity gate": "Mean toxicity gate",
              "mean gate of the other attributes": "Mean gate of the other attributes",
              "mean # intervened tokens": "Mean # intervened tokens"}
_GATE_GROUPS = ("Toxic", "Non-toxic")
#: Fig. 4's paper points: our curve in ``data_efficiency.json`` or our method in ``eval.json``, and the fraction
#: of the training data the paper gives the point at.
_FIG4_POINTS = {"MAT-Steer, 10% of the training data": ("MAT-Steer", 0.1), "DPO, 100%": ("lora_dpo", 1.0),
                "SFT, 100%": ("lora_sft", 1.0)}
_OURS_ONLY = "ours only: "


def _sizes_text(limits: Mapping[str, Any] | None) -> str:
    """``truthfulqa 4, toxigen all`` from a saved ``{task: limit}`` (None: the whole split)."""
    if not limits:
        return "the whole split"
    return ", ".join(f"{task} {'all' if n is None else n}" for task, n in limits.items())


def _ablation_note(saved: Mapping[str, Any], source: str) -> str:
    """What an ablation file records of its run: its sizes (``limits``, and the ablation's own ``options``), seeds,
    the MAT-Steer setting's source and the model, commit and date of its provenance."""
    limits, setting, prov = saved.get("limits", {}), saved.get("setting", {}), saved.get("provenance", {})
    options = ", ".join(f"{k} {v}" for k, v in saved.get("options", {}).items())
    return (f"Ours: `{source}` on {prov.get('model', {}).get('name', '?')}: test questions per task "
            f"{_sizes_text(limits.get('test'))}; dev {_sizes_text(limits.get('dev'))}; training texts per data set "
            f"{_sizes_text(limits.get('train'))}{f' (options: {options})' if options else ''}; seeds "
            f"{', '.join(map(str, saved.get('seeds', []))) or '?'}; "
            f"MAT-Steer setting from {setting.get('source', '?')} (multiplier {setting.get('multiplier', '?')}); "
            f"provenance commit {prov.get('git_commit', 'not recorded')}, date "
            f"{prov.get('date') or 'not recorded (the provenance keeps no timestamps; the commit dates it)'}.")


def _with_mean_column(item: PaperItem) -> PaperItem:
    """``item`` with our three-task mean as one more column (the paper gives none)."""
    return replace(item, columns=(*item.columns, _MEAN_COLUMN), rows=tuple((n, (*v, None)) for n, v in item.rows))


def _ablation_row(name: str, key: str, paper: Sequence[float | None], row: Mapping[str, Any] | None,
                  tasks: Sequence[str], source: str) -> Row:
    """Paper row ``name`` beside our ablation row ``key`` (``{task: {mean, std, n}, "mean": ..., "kl": ...}``,
    None: the file lacks it), one cell per task in ``tasks`` (primary metric or :data:`MEAN`, %)."""
    if row is None:
        return Row(name, key, tuple(Cell(p, missing=f"no {key!r} row in {source}") for p in paper))
    return Row(name, key, tuple(_score_cell(p, row.get(task), task, source) for task, p in zip(tasks, paper)))


def _ablation_rows(item: PaperItem, rows: Mapping[str, Any], ours_of: Mapping[str, str], order: Sequence[str],
                   tasks: Sequence[str], source: str) -> tuple[Row, ...]:
    """Each paper row beside our row ``ours_of.get(name, name)`` in the paper's order, then our rows without a
    paper row (in ``order``, then as saved), labelled "ours only"."""
    out = [_ablation_row(name, ours_of.get(name, name), values, rows.get(ours_of.get(name, name)), tasks, source)
           for name, values in item.rows]
    paired = {r.key for r in out}
    for key in dict.fromkeys(k for k in (*order, *rows) if k in rows and k not in paired):
        out.append(_ablation_row(_OURS_ONLY + key, key, (None,) * len(tasks), rows[key], tasks, source))
    return tuple(out)


def _above(claim: str, column: str, high: Cell, low: Cell) -> Direction:
    """``high`` above ``low`` in one column, the paper's way and ours. Ablation files hold no intervals: ours
    gives both means ± std over seeds and says "within one std" where the difference is below the larger std."""
    paper_d, ours_d = _sub(high.paper, low.paper), _sub(high.ours, low.ours)
    paper = "paper: not reported" if paper_d is None else f"paper {_diff_text(paper_d)}"
    if ours_d is None:
        ours = f"ours n/a ({high.missing or low.missing})"
    else:
        within = "; within one std" if abs(ours_d) < max(high.std or 0.0, low.std or 0.0) else ""
        ours = f"ours {_diff_text(ours_d)} ({_ours_text(high)} vs {_ours_text(low)}{within})"
    return Direction(claim, column, None if paper_d is None else paper_d > 0, None if ours_d is None else ours_d > 0,
                     f"{paper}; {ours}")


def _above_rows(rows: Sequence[Row], high: str, lows: Sequence[str], columns: Sequence[str]) -> list[Direction]:
    """Paper row ``high`` above each of ``lows`` in every column (:func:`_above`)."""
    by_name = {r.name: r for r in rows}
    return [_above(f"{high} above {low}", column, by_name[high].cells[j], by_name[low].cells[j])
            for low in lows for j, column in enumerate(columns)]


def table3(saved: Mapping[str, Any], source: str = ablation_file("components")) -> Comparison:
    """Table 3 beside a saved ``components`` ablation: each paper row (:data:`_TABLE3_ROWS`) and our extra rows,
    TruthfulQA MC2 (the paper's only column) and our three-task mean, %; directions: Full above Base and above
    each "w/o" row."""
    item = _with_mean_column(PAPER["table3"])
    rows = _ablation_rows(item, saved.get("result", {}).get("rows", {}), _TABLE3_ROWS, ROW_ORDER["components"],
                          ("truthfulqa", MEAN), source)
    lows = ["Base", *(n for n in item.row_names() if n.startswith("w/o"))]
    notes = (_MEASURE_NOTES["truthfulqa"], _MEASURE_NOTES[MEAN], _ablation_note(saved, source))
    return Comparison(item, rows, tuple(_above_rows(rows, "Full", lows, item.columns)), notes, source)


def table4(saved: Mapping[str, Any], source: str = ablation_file("tokens")) -> Comparison:
    """Table 4 beside a saved ``tokens`` ablation: each paper row and our random-direction controls, the three
    tasks' primary metrics, %; directions: MAT-Steer gating above All tokens (uniform) and above Base."""
    item = PAPER["table4"]
    rows = _ablation_rows(item, saved.get("result", {}).get("rows", {}), {}, ROW_ORDER["tokens"], _TABLE1_TASKS,
                          source)
    directions = _above_rows(rows, "MAT-Steer gating", ("All tokens (uniform)", "Base"), item.columns)
    notes = (*(_MEASURE_NOTES[t] for t in _TABLE1_TASKS),
             "Ours only: random directions of MAT-Steer's norms behind always-on gates or behind its learned gates "
             "(controls: does the direction or the gating carry the effect?).", _ablation_note(saved, source))
    return Comparison(item, rows, tuple(directions), notes, source)


def table2_gates(saved: Mapping[str, Any], source: str = ablation_file("paradetox_gates")) -> Comparison:
    """Table 2's gate rows beside a saved ``paradetox_gates`` ablation (one seed's steerer, so no std): mean
    toxicity gate, mean gate of the other attributes and mean intervened tokens on toxic and non-toxic ParaDetox
    sentences; directions: the toxicity gate and the intervened tokens higher on toxic than on non-toxic."""
    item = PAPER["table2_gates"]
    result = saved.get("result", {})
    table = result.get("table", {})
    rows = []
    for name, values in item.rows:
        ours = table.get(_GATE_ROWS[name], {})
        rows.append(Row(name, _GATE_ROWS[name], tuple(
            Cell(p, missing=f"no {group} value in {source}") if ours.get(group) is None
            else Cell(p, float(ours[group]), None, 1) for p, group in zip(values, _GATE_GROUPS))))
    column = f"{item.columns[0]} vs {item.columns[1]}"
    directions = [_above(claim, column, *rows[i].cells) for claim, i in (
        ("toxicity gate higher on toxic than on non-toxic", 0), ("more intervened tokens on toxic than on non-toxic", 2))]
    n = result.get("n", {})
    notes = (f"Ours: the gates of one steerer, the first seed's ({(saved.get('seeds') or ['?'])[0]}), on "
             f"{n.get('Toxic', '?')} toxic and {n.get('Non-toxic', '?')} non-toxic ParaDetox test sentences (never "
             f"trained on); a token is intervened when its toxicity gate is ≥ {result.get('threshold', '?')} (the "
             "paper gives no threshold).", _ablation_note(saved, source))
    return Comparison(item, tuple(rows), tuple(directions), notes, source)


def _fraction(points: Mapping[str, Any], fraction: float) -> Any:
    """The saved point of ``points`` (``{"0.1": ...}``) at ``fraction`` (None: not run)."""
    return next((v for f, v in points.items() if math.isclose(float(f), fraction)), None)


def fig4(saved: Mapping[str, Any], report: Mapping[str, Any] | None = None,
         source: str = ablation_file("data_efficiency")) -> Comparison:
    """Fig. 4 beside a saved ``data_efficiency`` ablation: the paper's three points (:data:`_FIG4_POINTS`) beside
    ours (MAT-Steer at 10 % from the ablation, LoRA SFT / DPO from the comparison ``report``, an ``eval.json``, when
    given), then every other point of our curves, TruthfulQA MC2 and the three-task mean, %; directions: MAT-Steer
    at 10 % above SFT and DPO at 100 %."""
    item = _with_mean_column(PAPER["fig4"])
    result = saved.get("result", {})
    detail, tasks = result.get("detail", {}), ("truthfulqa", MEAN)
    rows = []
    for name, values in item.rows:
        curve, fraction = _FIG4_POINTS[name]
        if curve in METHODS:
            rows.append(_method_row(name, curve, values, report or {}, tasks, EVAL_FILE))
        else:
            rows.append(_ablation_row(name, f"{curve}, {fraction:.0%}", values,
                                      _fraction(detail.get(curve, {}), fraction), tasks, source))
    paired = {r.key for r in rows}
    for curve, points in detail.items():
        for f in sorted(points, key=float):
            key = f"{curve}, {float(f):.0%}"
            if key not in paired:
                rows.append(_ablation_row(_OURS_ONLY + key, key, (None, None), points[f], tasks, source))
    for name, value in result.get("reference", {}).items():
        rows.append(Row(_OURS_ONLY + name, name, (Cell(None, missing=f"only the mean is saved in {source}"),
                                                  Cell(None, float(value) * 100, None, 1))))
    directions = _above_rows(rows, item.rows[0][0], item.row_names()[1:], item.columns)
    sizes = _sizes_text((report or {}).get("sizes", {}).get("test"))
    notes = ("The paper's points are TruthfulQA MC2; ours are TruthfulQA MC2 and the three-task test mean, the "
             "curves' measure (the figure).", _MEASURE_NOTES[MEAN],
             f"SFT and DPO: {EVAL_FILE}'s LoRA SFT / LoRA DPO rows (all the training data; test questions {sizes}), "
             "not re-run on the ablation's questions, so their level and the ablation's differ in questions too.",
             _ablation_note(saved, source))
    return Comparison(item, tuple(rows), tuple(directions), notes, source)


def _paper_statement(item: PaperItem) -> str:
    """Fig. 7's published numbers, as a sentence (the paper gives the margins' growth, no point values)."""
    return ", ".join(f"{_diff_text(v[0] or 0.0)} {name}" for name, v in item.rows)


def _margin_growth(rows: Sequence[Row], curves: Sequence[str], column: str) -> list[Direction]:
    """Fig. 7's direction per baseline curve (cells 1..): the first curve's margin over it grows from the first row
    (fewest attributes) to the last; the paper's evidence is its published growth (:func:`_paper_statement`)."""
    out = []
    for j, name in enumerate(curves[1:], 1):
        start, end = (_sub(rows[i].cells[0].ours, rows[i].cells[j].ours) for i in (0, -1))
        growth = _sub(end, start)
        ours = ("ours n/a" if growth is None or start is None or end is None else
                f"ours {_diff_text(growth)} ({curves[0]} − {name}: {_diff_text(start)} with {rows[0].name}, "
                f"{_diff_text(end)} with {rows[-1].name})")
        out.append(Direction(f"{curves[0]}'s margin over {name} grows with the attributes", column, True,
                             None if growth is None else growth > 0,
                             f"paper (win-rate points, 1 to 4 attributes): {_paper_statement(PAPER['fig7'])}; {ours}"))
    return out


def fig7(saved: Mapping[str, Any], source: str = ablation_file("num_attributes")) -> Comparison:
    """Fig. 7 beside a saved ``num_attributes`` ablation: our curves' test mean over all its tasks per number of
    steered attributes (the paper published no point values: its columns stay empty); direction: the first
    curve's (MAT-Steer's) margin over each other curve grows with the attributes (:func:`_margin_growth`)."""
    result = saved.get("result", {})
    curves, attributes, tasks = result.get("curves", {}), result.get("attributes", []), result.get("tasks", [])
    what = f"{len(tasks) or '?'}-task test mean"
    item = replace(PAPER["fig7"], title=f"number of attributes (ours: {what}, QA accuracy; paper: HelpSteer win rate)",
                   columns=tuple(f"{c}, {what}" for c in curves), rows=())
    ks = sorted({k for points in curves.values() for k in points}, key=int)
    rows = tuple(Row(f"{k} attribute{'' if k == '1' else 's'}", " + ".join(attributes[:int(k)]) or k, tuple(
        _score_cell(None, points.get(k), c, source) for c, points in curves.items())) for k in ks)
    notes = (f"The paper published no point values for Fig. 7, only how much MAT-Steer's HelpSteer win-rate margin "
             f"grows from 1 to 4 attributes ({_paper_statement(PAPER['fig7'])} points), so its columns are empty.",
             f"Ours: QA accuracy, the test mean over {', '.join(tasks)} (each task's primary metric), steering the "
             f"first k of {', '.join(attributes)}; no steering: "
             + ", ".join(f"{v * 100:.2f}" for v in result.get("reference", {}).values()) + ".",
             _ablation_note(saved, source))
    directions = _margin_growth(rows, list(curves), what) if rows else []
    return Comparison(item, rows, tuple(directions), notes, source)


def paper_comparisons(results: PaperResults) -> dict[str, Comparison]:
    """``{item key: comparison}`` for every paper item ``results`` holds a result for, in the paper's order."""
    ablations = results.ablations
    inputs: dict[str, tuple[Mapping[str, Any] | None, Callable[[Mapping[str, Any]], Comparison]]] = {
        "table1": (results.eval, table1), "table2_toxicity": (results.toxicity, table2_toxicity),
        "fig5": (results.generation, fig5), "table2_gates": (ablations.get("paradetox_gates"), table2_gates),
        "table3": (ablations.get("components"), table3), "table4": (ablations.get("tokens"), table4),
        "fig4": (ablations.get("data_efficiency"), lambda saved: fig4(saved, results.eval)),
        "fig7": (ablations.get("num_attributes"), fig7)}
    return {key: inputs[key][1](data) for key in PAPER if key in inputs and (data := inputs[key][0]) is not None}


#: What ``matsteer ablate <name>`` writes (its default ``--out``) and where ``matsteer paper`` reads it.
_ABLATION_WRITES = "results/ablations/{name}.json (read here from `ablations/{name}.json` in the results folder)"
#: The command that produces each paper item, what it writes and how it relates to the paper's (Makefile targets
#: reference / ablations / winrates; ``matsteer ablate --help``). An empty command: nothing builds it yet.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "table1": ("matsteer compare --reference", "results/reference/eval.json", "make reference"),
    "table2_toxicity": ("matsteer toxicity --reference", "results/reference/toxicity.json", ""),
    "fig5": ("matsteer truthfulqa-generation --reference", "results/reference/truthfulqa_generation.json", ""),
    "table2_gates": ("matsteer ablate paradetox_gates", _ABLATION_WRITES.format(name="paradetox_gates"),
                     "part of make ablations"),
    "table3": ("matsteer ablate components", _ABLATION_WRITES.format(name="components"), "part of make ablations"),
    "table4": ("matsteer ablate tokens", _ABLATION_WRITES.format(name="tokens"), "part of make ablations"),
    "fig4": ("matsteer ablate data_efficiency", _ABLATION_WRITES.format(name="data_efficiency"),
             "part of make ablations"),
    "fig7": ("matsteer ablate num_attributes", _ABLATION_WRITES.format(name="num_attributes"),
             "part of make ablations; QA accuracy over 1-4 attributes, not HelpSteer win rates"),
    "table5": ("matsteer winrates", "results/winrates.json",
               "make winrates; the default model judges (a weak judge) unless --judge-url names a stronger one"),
    "table9": ("", "", "no command combines MAT-Steer with ICL, SFT or DPO yet"),
}
NOT_RERUN = "not yet re-run on the current method"
_RESULT_FILES = {"table1": EVAL_FILE, "table2_toxicity": TOXICITY_FILE, "fig5": GENERATION_FILE,
                 **{key: ablation_file(name) for key, name in ABLATION_FILES.items()}}


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
    # An ablation records the seeds it ran (its provenance's are the configuration's).
    seeds = data.get("seeds") or prov.get("seeds") or data.get("config", {}).get("seeds") or []
    return (f"| `{name}` | {prov.get('git_commit', 'not recorded')} | {model} | "
            f"{', '.join(map(str, seeds)) or '–'} |")


def sources_markdown(results: PaperResults, results_label: str | None = None) -> str:
    """Where the numbers come from: the paper's (Llama-3.1-8B) and ours (each source file with the commit, model
    and seeds its provenance records)."""
    data = {EVAL_FILE: results.eval, GENERATION_FILE: results.generation, TOXICITY_FILE: results.toxicity,
            **{ablation_file(name): saved for name, saved in results.ablations.items()}}
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


def plot_fig4(comparison: Comparison, saved: Mapping[str, Any]) -> Figure:
    """Fig. 4 beside ours: our curves of a saved ``data_efficiency`` ablation (three-task test mean against the
    fraction of the training texts, ± std band, the no-steering line: ``matsteer figures``' own figure), the
    three-task test means of the comparison's (:func:`fig4`) LoRA SFT / DPO rows as horizontal lines where
    ``eval.json`` has them, and the paper's reported points (TruthfulQA MC2) as labelled grey markers."""
    fig = figures_from_ablation("data_efficiency", saved)
    ax = fig.axes[0]
    with style():
        lines = [(r.key, r.cells[-1].ours) for r in comparison.rows if r.key in METHODS]
        for i, (key, mean) in enumerate((k, m) for k, m in lines if m is not None):
            ax.axhline(mean, color=PALETTE[3 + i], linestyle="--", linewidth=1.2,
                       label=f"{METHOD_LABELS.get(key, key)}, 100% ({EVAL_FILE})")
        points = [(name, _FIG4_POINTS[name][1], values[0] or math.nan) for name, values in PAPER["fig4"].rows]
        ax.scatter([x for _, x, _ in points], [y for _, _, y in points], marker="D", s=36, color=_PAPER_COLOR,
                   edgecolor="0.35", zorder=3, label=f"{PAPER_LABEL} (TruthfulQA MC2)")
        for name, x, y in points:
            left = x < 0.5
            ax.annotate(f"{name}: {y:.2f}", (x, y), xytext=(5 if left else -5, 4), textcoords="offset points",
                        ha="left" if left else "right", fontsize=7, color="0.3")
        ax.set_ylabel("ours: three-task test mean (%)")
        ax.set_title(f"{comparison.item.name}: {comparison.item.title}")
        _legend_below(fig, ax)
    return fig


def _legend_below(fig: Figure, ax: Axes) -> None:
    """Move the legend of ``ax`` below the figure (the lines and the paper's points stay uncovered)."""
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7)


def plot_fig7(saved: Mapping[str, Any]) -> Figure:
    """Fig. 7 beside ours: our curves of a saved ``num_attributes`` ablation (test mean over all its tasks against
    the number of steered attributes, the no-steering line: ``matsteer figures``' own figure), with the paper's
    statement written on it (it published no point values)."""
    fig = figures_from_ablation("num_attributes", saved)
    ax = fig.axes[0]
    with style():
        ax.set_title(f"{PAPER['fig7'].name}: number of steered attributes (ours; dotted: no steering)")
        ax.legend(fontsize=8)  # our curves (the saved figure's legend is titled "vs.", for win rates)
        fig.supxlabel(f"{PAPER_LABEL}: HelpSteer win rates, no point values published;\nMAT-Steer's margin grows "
                      f"{_paper_statement(PAPER['fig7'])} points from 1 to 4 attributes", fontsize=7, color="0.3")
    return fig


def paper_figure(results: PaperResults, comparison: Comparison) -> Figure:
    """The figure of one compared item: Figs. 4 and 7 as their curves (:func:`plot_fig4`, :func:`plot_fig7`),
    every other item as bars beside the paper's (:func:`plot_comparison`)."""
    key = comparison.item.key
    if key == "fig4":
        return plot_fig4(comparison, results.ablations[ABLATION_FILES[key]])
    if key == "fig7":
        return plot_fig7(results.ablations[ABLATION_FILES[key]])
    return plot_comparison(comparison)


def item_markdown(results: PaperResults, key: str, folder: str | Path) -> str:
    """One ablation-based paper item (notebook 06): its table beside the paper's when its ablation file is among
    ``results`` (read from ``folder``), else a line saying it is not yet re-run and where the file would be."""
    found = paper_comparisons(results)
    if key in found:
        return comparison_markdown(found[key])
    item = PAPER[key]
    return (f"**{item.name}, {item.title}: {NOT_RERUN}.** No `{ABLATIONS_DIR}/{ABLATION_FILES[key]}.json` in "
            f"`{folder}`; the pending items below list the paper's numbers and the command that produces ours.")


def item_figure(results: PaperResults, key: str) -> Figure | None:
    """The figure of one ablation-based paper item (:func:`paper_figure`), None while it is not re-run."""
    found = paper_comparisons(results)
    return paper_figure(results, found[key]) if key in found else None


def paper_figures(results: PaperResults) -> dict[str, Figure]:
    """``{"paper_<item key>": figure}`` for every comparison ``results`` holds (:func:`paper_figure`)."""
    return {f"paper_{key}": paper_figure(results, c) for key, c in paper_comparisons(results).items()}


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
