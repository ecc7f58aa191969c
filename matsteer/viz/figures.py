"""Figures of saved results, with no model pass: an evaluation report (``results/eval.json``) and each saved
ablation (``results/ablations/<name>.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from matsteer.errors import ConfigError
from matsteer.eval.ablations import ROW_ORDER
from matsteer.eval.config import METHODS
from matsteer.eval.tasks import PRIMARY
from matsteer.viz.charts import (
    plot_ablation,
    plot_data_efficiency,
    plot_multiplier_sweep,
    plot_num_attributes,
    plot_targeting_frontier,
)
from matsteer.viz.tables import method_table_from_report, plot_gate_table, plot_method_table

__all__ = ["figures_from_ablation", "figures_from_report"]

_ABLATION_TITLES = {
    "components": "Loss components (Table 3), test, %", "tokens": "Which tokens to steer (Table 4), test, %",
    "interference": "Steer one attribute, score every task (test, %)",
    "training_tokens": "Which tokens to train on (test, %)",
}


def _rows_percent(name: str, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Ablation rows ``{setting: {task|"mean": {"mean", "std"}, "kl": ...}}`` as percentages, KL dropped, ordered."""

    known = ROW_ORDER.get(name, [])
    order = sorted(rows, key=lambda k: (known.index(k) if k in known else len(known), k == "all", k))
    return {s: {t: (v["mean"] * 100, v["std"] * 100) for t, v in rows[s].items() if t != "kl"} for s in order}


def _curves_percent(curves: Mapping[str, Mapping[str, Any]], x: type = float
                    ) -> dict[str, dict[Any, tuple[float, float]]]:
    """Saved curves ``{name: {"x": {"mean", "std"}}}`` as ``{name: {x: (mean %, std %)}}`` with numeric x."""
    return {name: {x(k): (p["mean"] * 100, p["std"] * 100) for k, p in pts.items()} for name, pts in curves.items()}


def figures_from_ablation(name: str, saved: Mapping[str, Any]) -> Figure:
    """The figure of one saved ablation (``results/ablations/<name>.json``, see :mod:`matsteer.eval.ablations`)."""
    r = saved["result"]
    ref = {k: v * 100 for k, v in r.get("reference", {}).items()}
    if name in _ABLATION_TITLES:
        return plot_ablation(_rows_percent(name, r["rows"]), ylabel="score (%)", title=_ABLATION_TITLES[name],
                             baseline=r.get("baseline"))
    if name == "data_efficiency":
        return plot_data_efficiency(_curves_percent(r["curves"]), reference=ref, ylabel="three-task mean (%)",
                                    title="Data efficiency (test)")
    if name == "num_attributes":
        return plot_num_attributes(_curves_percent(r["curves"], int), chance=ref.get("No steering"),
                                   ylabel="four-task mean (%)",
                                   title="Number of steered attributes (test; dotted: no steering)")
    if name == "layers":
        fig = plot_num_attributes(_curves_percent(r["curves"], int), chance=ref.get("No steering"),
                                  ylabel="three-task mean (%), dev",
                                  title="Layer sweep (dev; dotted: no steering)")
        fig.axes[0].set_xlabel("layer")
        return fig
    if name == "paradetox_gates":
        return plot_gate_table(r["table"], title=f"ParaDetox gates (intervened: toxicity gate ≥ {r['threshold']})")
    if name == "multiplier_sweep":
        return plot_multiplier_sweep(r["sweep"])
    if name == "targeting":
        return plot_targeting_frontier(r["frontier"], kl_budget=r["kl_budget"], chosen=r["chosen"],
                                       none=r.get("none_dev"))
    raise ConfigError(f"No figure for ablation {name!r}.")


def figures_from_report(report: Mapping[str, Any]) -> dict[str, Figure]:
    """The method table (Table 1 style) and grouped bars of an evaluation report (``results/eval.json``)."""

    methods = report["methods"]
    # The constant answer of each task (a reference row) first, then the methods in table order.
    constant = report.get("reference", {}).get("constant")
    rows = {"constant": constant} if constant else {}
    rows.update({m: methods[m] for m in sorted(methods, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))})
    ordered = {"methods": rows}
    columns = ("truthfulqa", "toxigen_pref", "toxigen", "bbq", "hh_rlhf", "mean")
    table = {label: {c: row[c] for c in columns if c in row}
             for label, row in method_table_from_report(ordered, scale=100, primary=PRIMARY).items()}
    return {"method_table": plot_method_table(table, title="Test scores (%), mean ± std over seeds"),
            "method_comparison": plot_ablation(table, ylabel="score (%)", title="Methods on the test questions",
                                               baseline=report["methods"].get("none", {}).get("label"))}
