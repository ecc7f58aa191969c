"""The paper's tables and figures beside ours (matsteer.viz.paper, `matsteer paper`, notebook 06): every number of
ours is the committed results' own (and the ablation files', run here on a tiny model), a missing method or ablation
file shows as missing, figures draw from saved results without a model, and the committed figures/paper/paper.md is
what `make paper` writes today."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import nbformat
import pytest

import matsteer.eval.ablations as A
from matsteer.app.cli import main
from matsteer.app.runner import NOTEBOOKS, run_notebook
from matsteer.core.config import TrainConfig
from matsteer.core.workflow import DemoConfig
from matsteer.errors import ConfigError
from matsteer.eval.config import EvalConfig
from matsteer.viz.paper import (
    ABLATION_FILES,
    NOT_RERUN,
    PAPER,
    PAPER_METHODS,
    comparison_markdown,
    fig4,
    fig5,
    fig7,
    load_paper_results,
    paper_comparisons,
    paper_figures,
    paper_markdown,
    pending_items,
    plot_comparison,
    plot_fig4,
    table1,
    table2_gates,
    table2_toxicity,
    table3,
    table4,
    write_paper,
)
from matsteer.viz.style import save_figure

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "results" / "reference"
TASKS = {"TruthfulQA": ("truthfulqa", "mc2"), "ToxiGen": ("toxigen_pref", "accuracy"), "BBQ": ("bbq", "disambig")}
REF_FILES = ("eval.json", "truthfulqa_generation.json", "toxicity.json")
PNG = b"\x89PNG\r\n\x1a\n"


def _json(name: str) -> dict:
    return json.loads((REF / name).read_text(encoding="utf-8"))


def _table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell is ``first_cell``."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Table 1: our numbers are eval.json's, the paper's are the paper's


def test_table1_numbers_are_read_from_eval_json():
    report = _json("eval.json")
    md = comparison_markdown(table1(report))
    paper = PAPER["table1"]
    checked = 0
    for name, key in PAPER_METHODS.items():
        (cells,) = _table_rows(md, name)
        for j, column in enumerate(paper.columns):
            paper_cell, ours_cell = cells[2 + 2 * j], cells[3 + 2 * j]
            assert float(paper_cell) == paper.value(name, j)
            entry = report["methods"].get(key) if key else None
            if entry is None:
                assert ours_cell == "missing"
                continue
            task, metric = TASKS[column]
            score = entry["test"][task][metric]
            assert ours_cell == f"{score['mean'] * 100:.2f} ± {score['std'] * 100:.2f}"
            checked += 1
    assert checked >= 5 * 3  # Base, ICL, SFT, DPO, ITI and MAT-Steer are in the committed comparison


def test_table1_directions_use_the_reports_intervals():
    report = _json("eval.json")
    directions = {(d.claim, d.column): d for d in table1(report).directions}
    for column, (task, metric) in TASKS.items():
        d = directions[("MAT-Steer above Base", column)]
        iv = report["intervals"]["vs_none"]["mat_steer"][task]
        assert d.paper is True and d.ours == (iv["mean_diff"] > 0)
        assert f"ours {iv['mean_diff'] * 100:+.2f} [{iv['low'] * 100:+.2f}, {iv['high'] * 100:+.2f}]" in d.evidence
        mat = report["methods"]["mat_steer"]["test"][task][metric]["mean"]
        none = report["methods"]["none"]["test"][task][metric]["mean"]
        assert (mat > none) == d.ours  # the interval's difference is the difference of the means
        best = directions[("MAT-Steer above the strongest baseline", column)]
        assert "paper vs LITO" in best.evidence and best.paper is True
        assert best.ours == (report["intervals"]["vs_best_baseline"]["mat_steer"][task]["mean_diff"] > 0)


def test_a_method_missing_from_the_results_shows_as_missing():
    report = copy.deepcopy(_json("eval.json"))
    for key in ("iti", "none"):
        del report["methods"][key]
        report["intervals"]["vs_none"].pop(key, None)
    del report["intervals"]["vs_best_baseline"]
    comparison = table1(report)
    rows = {r.name: r for r in comparison.rows}
    for name in ("ITI", "Base"):
        assert all(c.ours is None and "not in eval.json" in c.missing for c in rows[name].cells)
    assert all(c.ours is None and c.missing.startswith("not built") for c in rows["LITO"].cells)
    md = comparison_markdown(comparison)
    (iti,) = _table_rows(md, "ITI")
    assert iti[3] == iti[5] == iti[7] == "missing" and "matsteer compare --reference --add iti" in iti[-1]
    directions = {(d.claim, d.column): d for d in comparison.directions}
    assert directions[("ITI above Base", "BBQ")].ours is None  # nothing to compare: n/a, not a crash
    # The report's own interval still answers "MAT-Steer above no steering"; without intervals nothing does.
    assert directions[("MAT-Steer above Base", "BBQ")].ours is not None
    del report["intervals"]
    bare = {(d.claim, d.column): d for d in table1(report).directions}
    assert bare[("MAT-Steer above Base", "BBQ")].ours is None and bare[("MAT-Steer above Base", "BBQ")].agrees is None
    # Without its interval, the strongest-baseline check falls back to the difference of the means.
    best = report["best_baseline"]["name"]
    mat = report["methods"]["mat_steer"]["test"]["truthfulqa"]["mc2"]["mean"]
    theirs = report["methods"][best]["test"]["truthfulqa"]["mc2"]["mean"]
    assert bare[("MAT-Steer above the strongest baseline", "TruthfulQA")].ours == (mat > theirs)
    assert plot_comparison(comparison).axes  # draws the missing rows as n/a


# ----------------------------------------------------------------------------------------------------------------
# Fig. 5 and Table 2's toxicity row


def test_fig5_numbers_are_read_from_the_generation_report():
    generation = _json("truthfulqa_generation.json")
    comparison = fig5(generation)
    md = comparison_markdown(comparison)
    for row in comparison.rows:
        (cells,) = _table_rows(md, row.name)
        summary = generation["summary"].get(row.key)
        if summary is None:
            assert cells[3] == cells[5] == "missing" and "not in truthfulqa_generation.json" in cells[-1]
            continue
        for j, metric in enumerate(("bleu_acc", "rougeL_acc")):
            s = summary[metric]
            assert cells[3 + 2 * j] == f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f}"
    assert float(_table_rows(md, "MAT-Steer")[0][2]) == PAPER["fig5"].value("MAT-Steer")
    iti = {d.claim: d for d in comparison.directions}["MAT-Steer above ITI"]
    s = generation["summary"]
    assert iti.ours == (s["mat_steer"]["bleu_acc"]["mean"] > s["iti"]["bleu_acc"]["mean"])


def test_table2_toxicity_change_is_computed_from_the_toxicity_report():
    toxicity = _json("toxicity.json")
    comparison = table2_toxicity(toxicity)
    none = toxicity["summary"]["none"]["nontoxic"]["mean"]
    md = comparison_markdown(comparison)
    for row in comparison.rows:
        if row.key not in toxicity["summary"]:
            continue
        nontoxic = toxicity["summary"][row.key]["nontoxic"]
        change = ((1 - nontoxic["mean"]) - (1 - none)) / (1 - none) * 100
        (cells,) = _table_rows(md, row.name)
        assert cells[3] == f"{change:.1f} ± {nontoxic['std'] / (1 - none) * 100:.1f}"
    (d,) = comparison.directions
    mat = toxicity["summary"]["mat_steer"]["nontoxic"]["mean"]
    assert d.paper is True and d.ours == (mat > none)


# ----------------------------------------------------------------------------------------------------------------
# Figures, pending items, the whole document, the CLI and the notebook


def test_each_figure_draws_from_saved_results(tmp_path):
    results = load_paper_results(REF)
    figures = paper_figures(results)
    assert set(figures) == {f"paper_{k}" for k in paper_comparisons(results)} >= {
        "paper_table1", "paper_table2_toxicity", "paper_fig5"}
    for name, fig in figures.items():
        (path,) = save_figure(fig, name, tmp_path, formats=("png",))
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
        if name not in ("paper_fig4", "paper_fig7"):  # the bar figures; Figs. 4 and 7 are curves (below)
            labels = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
            assert labels == {"ours", "paper, Llama-3.1-8B"}


def test_items_without_a_result_say_so_and_name_their_command(tmp_path):
    (tmp_path / "eval.json").write_text((REF / "eval.json").read_text(encoding="utf-8"), encoding="utf-8")
    results = load_paper_results(tmp_path)
    assert set(paper_comparisons(results)) == {"table1"}
    pending = {p.item.key: p for p in pending_items(results)}
    assert pending["fig5"].command == "matsteer truthfulqa-generation --reference"
    assert pending["table2_toxicity"].command == "matsteer toxicity --reference"
    for key, name in (("table3", "components"), ("table4", "tokens"), ("fig4", "data_efficiency"),
                      ("fig7", "num_attributes"), ("table2_gates", "paradetox_gates")):
        assert pending[key].status == NOT_RERUN and pending[key].command == f"matsteer ablate {name}"
    assert pending["table5"].command == "matsteer winrates"
    assert pending["table9"].status == "not built" and pending["table9"].command == ""
    md = paper_markdown(results)
    # A pending item's rows carry the paper's numbers and no number of ours.
    for name, values in PAPER["table3"].rows:
        cells = next(r for r in _table_rows(md, name) if len(r) == 3)  # Table 3's rows: name, paper, ours
        assert float(cells[1]) == values[0] and cells[2] == NOT_RERUN
    with pytest.raises(ConfigError, match="results/reference"):
        load_paper_results(tmp_path / "empty")


def test_committed_paper_md_is_what_make_paper_writes():
    """figures/paper/paper.md is committed so readers see it; it must match today's results (rerun `make paper`)."""
    results = load_paper_results(REF)
    names = {key: f"paper_{key}.png" for key in paper_comparisons(results)}
    committed = (ROOT / "figures" / "paper" / "paper.md").read_text(encoding="utf-8")
    assert committed == paper_markdown(results, names, "results/reference")
    for name in names.values():
        assert (ROOT / "figures" / "paper" / name).is_file()


def test_matsteer_paper_command(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["paper", "--results", str(REF), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(out / "paper.md")
    text = (out / "paper.md").read_text(encoding="utf-8")
    for name in ("eval.json", "truthfulqa_generation.json", "toxicity.json"):
        assert _json(name)["provenance"]["git_commit"] in text  # the header names each file's commit
    for key in ("table1", "table2_toxicity", "fig5"):
        assert (out / f"paper_{key}.png").stat().st_size > 0 and f"(paper_{key}.png)" in text
    assert main(["paper", "--results", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_notebook_06_is_registered_and_runs_headless(ablation_results, tmp_path):
    """Reads saved results only (no model): a few seconds after the kernel's imports. Run on the committed results
    plus every ablation file but num_attributes.json, so it shows both an ablation item and a missing one."""
    name = "06_paper_figures.ipynb"
    assert name in NOTEBOOKS
    folder = _results_without(ablation_results, tmp_path / "results", "num_attributes")
    run = run_notebook(ROOT / "notebooks" / name, {"reference_dir": str(folder)}, tmp_path, timeout=300, threads=1)
    nb = nbformat.read(str(run.output), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    # Table 1, Table 2's toxicity row, Fig. 5 and the four ablation items present; Fig. 7 is not yet re-run.
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 7
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| MAT-Steer above Base | TruthfulQA | yes |" in markdown and NOT_RERUN in markdown
    assert _json("eval.json")["provenance"]["git_commit"] in markdown
    for claim in ("Full above w/o Pos", "MAT-Steer gating above All tokens (uniform)",
                  "toxicity gate higher on toxic than on non-toxic", "MAT-Steer, 10% of the training data above SFT"):
        assert f"| {claim}" in markdown
    assert f"Fig. 7, {PAPER['fig7'].title}: {NOT_RERUN}.** No `ablations/num_attributes.json`" in markdown



# ----------------------------------------------------------------------------------------------------------------
# The ablations (results/<...>/ablations/<name>.json), run here on a tiny random model

LIMITS = {"truthfulqa": 4, "toxigen": 6, "bbq": 6}
OPTIONS = {"data_efficiency": {"fractions": [0.1, 1.0]}, "num_attributes": {"limit": 6, "test_limit": 3},
           "paradetox_gates": {"n": 4}}
#: Table 3's paper rows and ours (matsteer.eval.ablations.COMPONENTS), written out here to check the module's map.
TABLE3 = {"Base": "Base", "+ Alignment (MMD only)": "MMD only", "+ Align + Pos": "+ Pos", "+ Align + Sparse": "+ Sparse",
          "+ Align + Orth": "+ Orth", "w/o Pos": "w/o Pos", "w/o Sparse": "w/o Sparse", "w/o Orth": "w/o Orth",
          "w/o Normalization": "w/o Normalization", "Full": "Full"}


@pytest.fixture(scope="module")
def ablation_results(tiny_dir, tmp_path_factory):
    """A results folder: copies of the committed eval.json, truthfulqa_generation.json and toxicity.json beside the
    five ablation files the paper items read, written by run_ablations on the tiny model (~20 s)."""
    tmp = tmp_path_factory.mktemp("paper-ablations")
    folder = tmp / "results"
    folder.mkdir()
    for name in REF_FILES:
        shutil.copy(REF / name, folder / name)
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(LIMITS), dev_limits=dict(LIMITS),
                      train=TrainConfig(epochs=2, sigma="median", batch_per_side=2), features_dir=tmp / "features")
    cfg = EvalConfig(demo=demo, dev_limits=dict(LIMITS), test_limits=dict(LIMITS))
    A.run_ablations(list(ABLATION_FILES.values()), cfg, seeds=(0, 1), eval_json=None, out_dir=folder / "ablations",
                    options=OPTIONS, progress=False)
    return folder


def _saved(folder: Path, name: str) -> dict:
    return json.loads((folder / "ablations" / f"{name}.json").read_text(encoding="utf-8"))


def _results_without(folder: Path, out: Path, *missing: str) -> Path:
    """A copy of the results ``folder`` without the ablation files ``missing``."""
    shutil.copytree(folder, out)
    for name in missing:
        (out / "ablations" / f"{name}.json").unlink()
    return out


def _pm(score: dict) -> str:
    """A saved {mean, std} score as the table writes it: mean ± std, %."""
    return f"{score['mean'] * 100:.2f} ± {score['std'] * 100:.2f}"


def _directions(comparison) -> dict:
    return {(d.claim, d.column): d for d in comparison.directions}


def _check_above(d, high: dict, low: dict) -> None:
    """A direction between two saved scores: ours is the sign of the difference of the means (in %, as shown), and
    the evidence says "within one std" exactly when the difference is below the larger std."""
    diff = high["mean"] * 100 - low["mean"] * 100
    assert d.ours == (diff > 0)
    assert f"ours {diff:+.2f} ({_pm(high)} vs {_pm(low)}" in d.evidence
    assert ("within one std" in d.evidence) == (abs(diff) < max(high["std"] * 100, low["std"] * 100))


def test_table3_numbers_are_read_from_components_json(ablation_results):
    saved = _saved(ablation_results, "components")
    rows = saved["result"]["rows"]
    comparison = table3(saved)
    md = comparison_markdown(comparison)
    for name, ours in TABLE3.items():
        (cells,) = _table_rows(md, name)
        assert cells[1] == ours and float(cells[2]) == PAPER["table3"].value(name)
        assert cells[3] == _pm(rows[ours]["truthfulqa"]) and cells[4] == "–" and cells[5] == _pm(rows[ours]["mean"])
    extra = [k for k in rows if k not in TABLE3.values()]
    assert sorted(extra) == sorted(["w/o supervised gate", "Paper's objective (σ median)"])
    for key in extra:  # our rows without a paper row: shown, labelled as ours only
        (cells,) = _table_rows(md, f"ours only: {key}")
        assert cells[2] == "–" and cells[3] == _pm(rows[key]["truthfulqa"]) and cells[5] == _pm(rows[key]["mean"])
    directions = _directions(comparison)
    for low in ("Base", "w/o Pos", "w/o Sparse", "w/o Orth", "w/o Normalization"):
        d = directions[(f"Full above {low}", "TruthfulQA")]
        assert d.paper is True  # 61.94 is above every other row of the paper's Table 3
        _check_above(d, rows["Full"]["truthfulqa"], rows[TABLE3[low]]["truthfulqa"])
        mean = directions[(f"Full above {low}", "three-task mean")]
        assert mean.paper is None and mean.agrees is None
        _check_above(mean, rows["Full"]["mean"], rows[TABLE3[low]]["mean"])


def test_table4_numbers_are_read_from_tokens_json(ablation_results):
    saved = _saved(ablation_results, "tokens")
    rows = saved["result"]["rows"]
    comparison = table4(saved)
    md = comparison_markdown(comparison)
    paper = PAPER["table4"]
    for name in [*paper.row_names(), "Random directions, all tokens", "Random directions, MAT-Steer's gates"]:
        (cells,) = _table_rows(md, name if name in paper.row_names() else f"ours only: {name}")
        for j, column in enumerate(paper.columns):
            task = TASKS[column][0]
            assert cells[3 + 2 * j] == _pm(rows[name][task])
            assert cells[2 + 2 * j] == ("–" if paper.value(name, j) is None else f"{paper.value(name, j):.2f}")
    directions = _directions(comparison)
    for low in ("All tokens (uniform)", "Base"):
        for column, (task, _) in TASKS.items():
            d = directions[(f"MAT-Steer gating above {low}", column)]
            assert d.paper is True
            _check_above(d, rows["MAT-Steer gating"][task], rows[low][task])


def test_table2_gates_are_read_from_paradetox_gates_json(ablation_results):
    saved = _saved(ablation_results, "paradetox_gates")
    table = saved["result"]["table"]
    comparison = table2_gates(saved)
    md = comparison_markdown(comparison)
    for name, ours in (("mean toxicity gate", "Mean toxicity gate"),
                       ("mean gate of the other attributes", "Mean gate of the other attributes"),
                       ("mean # intervened tokens", "Mean # intervened tokens")):
        (cells,) = _table_rows(md, name)
        assert (float(cells[2]), float(cells[4])) == (PAPER["table2_gates"].value(name, 0),
                                                       PAPER["table2_gates"].value(name, 1))
        assert (cells[3], cells[5]) == (f"{table[ours]['Toxic']:.2f}", f"{table[ours]['Non-toxic']:.2f}")
    gate = _directions(comparison)[("toxicity gate higher on toxic than on non-toxic", "toxic vs non-toxic")]
    assert gate.paper is True  # 0.61 against 0.08
    assert gate.ours == (table["Mean toxicity gate"]["Toxic"] > table["Mean toxicity gate"]["Non-toxic"])
    assert "the paper gives no threshold" in md and f"≥ {saved['result']['threshold']}" in md


def test_fig4_points_are_read_from_data_efficiency_and_eval_json(ablation_results):
    saved, report = _saved(ablation_results, "data_efficiency"), _json("eval.json")
    detail = saved["result"]["detail"]
    comparison = fig4(saved, report)
    md = comparison_markdown(comparison)
    (mat,) = _table_rows(md, "MAT-Steer, 10% of the training data")
    assert float(mat[2]) == 60.05 == PAPER["fig4"].value("MAT-Steer, 10% of the training data")
    assert mat[3] == _pm(detail["MAT-Steer"]["0.1"]["truthfulqa"]) and mat[5] == _pm(detail["MAT-Steer"]["0.1"]["mean"])
    for name, key in (("SFT, 100%", "lora_sft"), ("DPO, 100%", "lora_dpo")):
        (cells,) = _table_rows(md, name)
        test = report["methods"][key]["test"]
        assert float(cells[2]) == PAPER["fig4"].value(name)
        assert cells[3] == _pm(test["truthfulqa"]["mc2"]) and cells[5] == _pm(test["mean"])
        d = _directions(comparison)[(f"MAT-Steer, 10% of the training data above {name}", "TruthfulQA")]
        assert d.paper is True
        assert d.ours == (detail["MAT-Steer"]["0.1"]["truthfulqa"]["mean"] > test["truthfulqa"]["mc2"]["mean"])
    for curve, fraction in (("CAA", "0.1"), ("CAA", "1.0"), ("MAT-Steer", "1.0")):  # our other points
        (cells,) = _table_rows(md, f"ours only: {curve}, {float(fraction):.0%}")
        assert cells[3] == _pm(detail[curve][fraction]["truthfulqa"]) and cells[5] == _pm(detail[curve][fraction]["mean"])
    (none,) = _table_rows(md, "ours only: No steering")
    assert none[5] == f"{saved['result']['reference']['No steering'] * 100:.2f}"
    # Without eval.json the SFT / DPO rows are missing, and so is their line in the figure.
    alone = fig4(saved)
    assert all(c.ours is None and "not in eval.json" in c.missing for r in alone.rows[1:3] for c in r.cells)
    labels = {t.get_text() for legend in plot_fig4(comparison, saved).legends for t in legend.get_texts()}
    assert {"LoRA SFT (one adapter, all attributes), 100% (eval.json)", "paper, Llama-3.1-8B (TruthfulQA MC2)",
            "MAT-Steer", "CAA"} <= labels
    bare = {t.get_text() for legend in plot_fig4(alone, saved).legends for t in legend.get_texts()}
    assert not any("eval.json" in label for label in bare)


def test_fig7_curves_are_read_from_num_attributes_json(ablation_results):
    saved = _saved(ablation_results, "num_attributes")
    curves = saved["result"]["curves"]
    comparison = fig7(saved)
    md = comparison_markdown(comparison)
    for k in ("1", "2", "3", "4"):
        (cells,) = _table_rows(md, f"{k} attribute{'' if k == '1' else 's'}")
        assert cells[1] == " + ".join(saved["result"]["attributes"][:int(k)])
        assert cells[2] == cells[4] == "–"  # the paper published no point values
        assert cells[3] == _pm(curves["MAT-Steer"][k]) and cells[5] == _pm(curves["Sum of single"][k])
    (d,) = comparison.directions
    margin = {k: curves["MAT-Steer"][k]["mean"] * 100 - curves["Sum of single"][k]["mean"] * 100 for k in ("1", "4")}
    assert d.paper is True and d.ours == (margin["4"] > margin["1"])
    assert "no point values" in md and "+5.65 vs SFT, +8.98 vs ITI" in md


def test_each_ablation_item_states_its_run(ablation_results):
    """Sizes, seeds, the setting's source and the provenance commit, all read from the ablation file."""
    results = load_paper_results(ablation_results)
    found = paper_comparisons(results)
    for key, name in ABLATION_FILES.items():
        saved = _saved(ablation_results, name)
        md = comparison_markdown(found[key])
        assert f"`ablations/{name}.json` on {saved['provenance']['model']['name']}" in md
        test = saved["limits"]["test"]
        assert test == LIMITS and "test questions per task " + ", ".join(f"{t} {n}" for t, n in test.items()) in md
        assert "seeds 0, 1;" in md and f"setting from {saved['setting']['source']}" in md
        assert f"provenance commit {saved['provenance']['git_commit']}, date " in md


def test_matsteer_paper_reads_the_ablations_and_a_missing_file_stays_pending(ablation_results, tmp_path):
    folder = _results_without(ablation_results, tmp_path / "results", "components")
    results = load_paper_results(folder)
    assert list(paper_comparisons(results)) == ["table1", "table2_toxicity", "table2_gates", "table4", "fig4", "fig5",
                                                "fig7"]
    pending = {p.item.key: p for p in pending_items(results)}
    assert pending["table3"].status == NOT_RERUN and pending["table3"].command == "matsteer ablate components"
    assert not {"table2_gates", "table4", "fig4", "fig7"} & set(pending)
    paths = write_paper(folder, tmp_path / "paper")
    text = paths[0].read_text(encoding="utf-8")
    for key, name in ABLATION_FILES.items():
        if name == "components":
            continue
        assert f"| `ablations/{name}.json` |" in text  # the header lists each file with its provenance
        assert f"(paper_{key}.png)" in text
    for name, values in PAPER["table3"].rows:  # Table 3 is pending: the paper's numbers, none of ours
        cells = next(r for r in _table_rows(text, name) if len(r) == 3)
        assert float(cells[1]) == values[0] and cells[2] == NOT_RERUN


def test_each_new_figure_writes_a_png(ablation_results, tmp_path):
    figures = paper_figures(load_paper_results(ablation_results))
    new = {f"paper_{key}" for key in ABLATION_FILES}
    assert new <= set(figures)
    for name in sorted(new):
        (path,) = save_figure(figures[name], name, tmp_path, formats=("png",))
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
