"""The five notebooks: committed clean, logic-free and parameterised; run_notebook's checks; headless runs (slow)."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

from matsteer.activations.sites import Site
from matsteer.app.notebooks import KERNEL_NAME, install_kernel, strip_outputs
from matsteer.app.parameters import notebook_parameters
from matsteer.app.paths import notebooks_dir, project_root
from matsteer.app.progress import ProgressPrinter
from matsteer.app.runner import NOTEBOOKS, NotebookExecutionError, run_all, run_notebook
from matsteer.app.steps import step_labels
from matsteer.app.summary import comparison_summary
from matsteer.app.timings import load_timings
from matsteer.app.workbench import PARAMETERS, workbench
from matsteer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"
COMMON = {"model", "layer", "quick", "seed", "features_dir"}


def _read(name: str):
    return nbformat.read(str(FOLDER / name), as_version=4)


# ----------------------------------------------------------------------------------------------------------------
# The committed notebooks


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == KERNEL_NAME  # the kernel make lab registers
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_one_parameters_cell_and_no_logic(name):
    nb = _read(name)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    params = notebook_parameters(FOLDER / name)
    assert COMMON <= set(params), f"{name} lacks {COMMON - set(params)}"
    assert params["quick"].default is True and params["layer"].default == 14
    assert any(p.endswith("_dir") and p != "features_dir" for p in params) or name.startswith("01")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for src in code:
        # All logic lives in matsteer: no function/class definitions or lambdas a test would want.
        assert not re.search(r"^\s*(def|class|async def)\s", src, re.M), f"{name} defines a function or class"
        assert "lambda" not in src
    assert any("from matsteer" in src for src in code)
    # A story: a markdown cell opens the notebook and markdown separates the steps.
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    n_md = sum(c.cell_type == "markdown" for c in nb.cells)
    assert n_md >= 3 and n_md >= len(code) // 3


def test_notebook_order_and_location():
    assert notebooks_dir() == FOLDER
    assert [p.name for p in sorted(FOLDER.glob("*.ipynb"))] == list(NOTEBOOKS)
    assert project_root(FOLDER) == ROOT


# ----------------------------------------------------------------------------------------------------------------
# Parameters: checked before any kernel starts


def test_wrong_parameter_type_names_the_parameter(tmp_path):
    path = FOLDER / "02_train_steering.ipynb"
    with pytest.raises(ConfigError, match="'layer'"):
        run_notebook(path, {"layer": "14"}, tmp_path)
    with pytest.raises(ConfigError, match="'quick'"):
        run_notebook(path, {"quick": 1}, tmp_path)
    with pytest.raises(ConfigError, match="'layer'"):
        run_notebook(path, {"layer": True}, tmp_path)  # a bool is not an int parameter
    with pytest.raises(ConfigError, match="'epochs'"):
        run_notebook(path, {"epochs": 2.5}, tmp_path)  # annotated int | None
    with pytest.raises(ConfigError, match="'sigma'"):
        run_notebook(path, {"sigma": [2.0]}, tmp_path)  # annotated float | str
    with pytest.raises(ConfigError, match="Unknown parameter"):
        run_notebook(path, {"layers": 3}, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing was executed or written


def test_parameter_types_accept_compatible_values():
    params = notebook_parameters(FOLDER / "02_train_steering.ipynb")
    assert params["epochs"].check(None) is None and params["epochs"].check(3) == 3
    assert params["sigma"].check(2) == 2 and params["sigma"].check("median") == "median"
    assert params["steerer_dir"].check(Path("/tmp/x")) == "/tmp/x"  # a Path becomes its string
    assert params["seed"].check(7) == 7


def _tiny_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("n = 2\nfail = False\nlabel: str | None = None")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), p,
                nbformat.v4.new_code_cell("assert not fail, 'asked to fail'\nprint(n * 21, label)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_run_notebook_injects_parameters_and_saves_copy(tmp_path):
    src = _tiny_notebook(tmp_path / "tiny.ipynb")
    run = run_notebook(src, {"label": "x", "fail": False}, tmp_path / "out", timeout=60, cwd=tmp_path, threads=1)
    assert run.output == tmp_path / "out" / "tiny.ipynb" and run.seconds > 0
    nb = nbformat.read(str(run.output), as_version=4)
    injected = nb.cells[2]
    assert injected.metadata["tags"] == ["injected-parameters"] and "label = 'x'" in injected.source
    assert nb.cells[3].outputs[0]["text"].strip() == "42 x"
    assert nb.metadata["matsteer"]["run"]["parameters"] == {"label": "x", "fail": False}
    # The source notebook is untouched.
    assert len(nbformat.read(str(src), as_version=4).cells) == 3
    # A failing cell: the partly executed copy is still written, and the error names it.
    with pytest.raises(NotebookExecutionError, match="asked to fail") as err:
        run_notebook(src, {"fail": True}, tmp_path / "failed", timeout=60, cwd=tmp_path, threads=1)
    assert "tiny.ipynb" in str(err.value) and (tmp_path / "failed" / "tiny.ipynb").is_file()


def test_strip_outputs(tmp_path):
    src = _tiny_notebook(tmp_path / "t.ipynb")
    nb = nbformat.read(str(src), as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="x")]
    nb.cells[2].execution_count = 3
    nbformat.write(nb, str(src))
    assert strip_outputs(src) is True and strip_outputs(src) is False
    assert nbformat.read(str(src), as_version=4).cells[2].outputs == []


def test_workbench_settings(tmp_path):
    wb = workbench(quick=True, features_dir="features", steerer_dir=tmp_path / "s")
    assert wb.demo.features_dir == project_root() / "features"  # relative -> under the project root
    assert wb.steerer_dir == tmp_path / "s"
    assert wb.demo.train.epochs == 5 and wb.demo.train.sigma == "median"
    assert all(v is not None and v <= 24 for v in wb.demo.limits.values())
    assert workbench(quick=False, epochs=7).demo.train.epochs == 7
    with pytest.raises(ConfigError):
        workbench(layer=-1)
    with pytest.raises(ConfigError):
        workbench(sigma="wide")
    with pytest.raises(ConfigError, match="01_extract_activations"):
        workbench(features_dir=tmp_path / "none").feature_folders("train")
    assert workbench().dev_questions(0) == {}
    groups = workbench(quick=True).paradetox_texts(3)
    assert set(groups) == {"Toxic", "Non-toxic"} and len(groups["Toxic"]) == 3 and groups["Non-toxic"]


def test_workbench_reads_the_parameters_from_a_namespace(tmp_path):
    """``workbench(globals())``: the notebook parameters it knows, nothing else of the namespace."""
    namespace = {"quick": False, "layer": 10, "epochs": 7, "seed": 3, "steerer_dir": str(tmp_path / "s"),
                 "max_new_tokens": 0, "dev_questions": 2, "prompt": "hi", "multiplier": 2.0,
                 "site": Site(3, "attn_output"), "In": [], "wb": object()}
    wb = workbench(namespace)
    assert (wb.layer, wb.seed, wb.quick, wb.demo.train.epochs) == (10, 3, False, 7)
    assert wb.steerer_dir == tmp_path / "s" and wb.features_dir == project_root() / "features"  # default
    assert wb.site == Site(10, "residual")  # a later `site = ...` in the notebook is not a parameter
    assert wb.max_new_tokens == 48 and wb.dev_questions_per_task == 2  # 0 / None: the mode's default
    assert workbench(namespace, layer=12, max_new_tokens=5).layer == 12  # keywords win over the namespace
    assert workbench(namespace, max_new_tokens=5).max_new_tokens == 5
    assert workbench({}).to_dict() == workbench().to_dict()
    assert workbench({"quick": True, "dev_questions": None}).dev_questions_per_task == 3
    with pytest.raises(TypeError):
        workbench(namespace, layers=3)  # keywords are the builder's own


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_imports_once_and_reads_its_parameters_through_the_workbench(name):
    """One import cell (the public API, the tuner aside), then ``wb = workbench(globals())``; later cells read the
    shared settings from ``wb`` and only the notebook's own parameters (a prompt, a multiplier) by name."""
    import ast

    nb = _read(name)
    declared = notebook_parameters(FOLDER / name)
    code = [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    trees = [ast.parse("\n".join("" if line.lstrip().startswith("%") else line for line in c.source.splitlines()))
             for c in code]
    importing = [t for t in trees if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(t))]
    assert len(importing) == 1, f"{name}: imports in {len(importing)} cells"
    modules = {n.module for n in ast.walk(importing[0]) if isinstance(n, ast.ImportFrom)}
    assert {m for m in modules if m.startswith("matsteer")} <= {"matsteer", "matsteer.app.widgets"}
    assert "wb = workbench(globals())" in code[1].source  # right after the import cell
    read = {n.id for t in trees for n in ast.walk(t) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert not read & set(PARAMETERS), f"{name} reads {read & set(PARAMETERS)} by name, not from wb"
    own = set(declared) - set(PARAMETERS)
    assert own <= read, f"{name} declares {own - read} but never uses them"


# ----------------------------------------------------------------------------------------------------------------
# A main job that talks: step lines, estimates from earlier runs, failures that name the cell, the summary


def _talking_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("quick = True\nparts = 2\nfail = False")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# talking"), p,
        nbformat.v4.new_code_cell("%matplotlib inline\nimport sys\nfrom matsteer import report_step"),
        nbformat.v4.new_markdown_cell("## 1. Work in parts"),
        nbformat.v4.new_code_cell("for i in range(parts):\n    report_step(f'part {i + 1} of {parts}')\n"
                                  "print('plain output stays in the notebook')\nprint('a warning', file=sys.stderr)"),
        nbformat.v4.new_code_cell("print('same section, no new line')"),
        nbformat.v4.new_markdown_cell("## 2. Maybe fail"),
        nbformat.v4.new_code_cell("assert not fail, 'asked to fail'"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_step_labels_of_the_workbench_notebooks():
    labels = {name[:2]: list(step_labels(_read(name)).values()) for name in NOTEBOOKS}
    assert any(label.startswith("2. Extract train and dev activations (extract_splits") for label in labels["01"])
    assert any(label.startswith("2. Train (train_from_features") for label in labels["02"])
    assert "workbench, quick_evaluation" in labels["04"]  # the comparison cell, before the first section
    for name in NOTEBOOKS:  # parameters and import-only cells get no line
        nb = _read(name)
        for index in step_labels(nb):
            cell = nb.cells[index]
            assert "parameters" not in cell.metadata.get("tags", []) and not cell.source.startswith("%matplotlib")


def test_progress_printer_estimates_from_earlier_timings():
    from matsteer.app.timings import notebook_estimates

    timings = {"quick": {"a": {"seconds": 10.0, "cells": {"c1": 4.0, "c2": 6.0}}}}
    est = notebook_estimates(["a", "b"], True, timings)
    assert est["a"].measured and est["b"].seconds is None  # unknown notebook, no default: no estimate
    assert notebook_estimates(["02_train_steering"], False, {})["02_train_steering"].seconds > 0  # the README's times
    clock, out = _Clock(), io.StringIO()
    printer = ProgressPrinter(notebook_estimates(["a", "c"], True, {"quick": {**timings["quick"], "c": {"seconds": 20}}}),
                              out=out, err=io.StringIO(), clock=clock)
    assert printer.left() == 30
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = f(1)"), nbformat.v4.new_code_cell("y = g(2)")]
    nb.cells[0]["id"], nb.cells[1]["id"] = "c1", "c2"
    printer.notebook_started("a", nb)
    printer.cell_started(0)
    clock.now += 3
    assert printer.left() == 1 + 6 + 20  # the rest of this cell, the next cell, the next notebook
    printer.kernel_message({"msg_type": "stream", "content": {"name": "stdout", "text": "[matsteer] half"}})
    printer.kernel_message({"msg_type": "stream", "content": {"name": "stdout", "text": "way\nnot a step\n"}})
    clock.now += 10  # overran its estimate: the cell counts as done, not negative
    assert printer.left() == 6 + 20
    text = out.getvalue()
    assert "[0:00] a (1/2, last run 0:10)  (~0:30 left)" in text
    assert "[0:00]   a · f  (~0:30 left)" in text  # a cell before any section: the functions it calls
    assert "[0:03]   a · halfway  (~0:27 left)" in text and "not a step" not in text


def test_talking_run_streams_steps_and_records_timings(tmp_path, capfd):
    src = _talking_notebook(tmp_path / "talk.ipynb")
    from matsteer.app.timings import Estimate

    out = io.StringIO()
    printer = ProgressPrinter({"talk": Estimate(30.0)}, out=out)
    run = run_notebook(src, {"parts": 3}, tmp_path / "out", timeout=60, cwd=tmp_path, threads=1, printer=printer)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[0:00] talk (1/1, expected 0:30)")
    steps = [line for line in lines if " talk · " in line]
    assert [s.split(" talk · ")[1].split("  (")[0] for s in steps] == [
        "1. Work in parts (report_step)", "part 1 of 3", "part 2 of 3", "part 3 of 3",
        "2. Maybe fail"]
    assert "done in" in lines[-1] and "talk.ipynb" in lines[-1] and "plain output" not in out.getvalue()
    captured = capfd.readouterr()
    assert "a warning" in captured.err  # the kernel's stderr passes through
    assert "without encryption" not in captured.err  # IPC sockets: no TCP warning from the kernel
    # Every executed cell was timed by id, for the next run's estimates.
    nb = nbformat.read(str(run.output), as_version=4)
    assert set(run.cell_seconds) == {c["id"] for c in nb.cells if c.cell_type == "code"}


def test_failure_names_notebook_cell_and_error(tmp_path):
    src = _talking_notebook(tmp_path / "talk.ipynb")
    with pytest.raises(NotebookExecutionError) as err:
        run_notebook(src, {"fail": True}, tmp_path / "failed", timeout=60, cwd=tmp_path, threads=1)
    message = str(err.value)
    first = message.splitlines()[0]
    assert first.startswith("talk.ipynb failed in code cell 6 of 6 (\"assert not fail, 'asked to fail'\")")
    assert first.endswith("AssertionError: asked to fail")
    assert f"The partly executed notebook is {tmp_path / 'failed' / 'talk.ipynb'}" in message
    assert "\x1b[" not in message  # no terminal colour codes
    executed = nbformat.read(str(tmp_path / "failed" / "talk.ipynb"), as_version=4)
    assert any(o.get("ename") == "AssertionError" for c in executed.cells if c.cell_type == "code"
               for o in c.outputs)


def test_run_all_keeps_timings_for_the_next_run(tmp_path, monkeypatch):
    import matsteer.app.runner as runner

    folder = tmp_path / "nbs"
    folder.mkdir()
    monkeypatch.setattr(runner, "NOTEBOOKS", ("01_talk.ipynb",))
    _talking_notebook(folder / "01_talk.ipynb")
    out = io.StringIO()
    run_all(quick=True, out_dir=tmp_path / "out", folder=folder, cwd=tmp_path, threads=1, talk=True, out=out,
            parameters={"parts": 1})
    first = load_timings(tmp_path / "out")
    assert first["quick"]["01_talk"]["seconds"] > 0 and first["quick"]["01_talk"]["cells"]
    out = io.StringIO()
    run_all(quick=True, out_dir=tmp_path / "out", folder=folder, cwd=tmp_path, threads=1, talk=True, out=out)
    assert "01_talk (1/1, last run" in out.getvalue()  # the estimate now comes from the first run
    (tmp_path / "out" / "timings.json").write_text("{not json")  # a damaged file only loses the estimates
    assert load_timings(tmp_path / "out") == {}


def test_quick_evaluation_reports_the_comparison_steps(monkeypatch, capsys, tmp_path):
    """quick_evaluation hands report_step to run_evaluation, so each step is a talking run's line."""
    import matsteer.app.workbench as nb
    from matsteer.app.workbench import STEP_PREFIX, quick_evaluation, workbench

    def fake_run(cfg, progress=True, on_step=None):
        on_step("comparison: dev: tuning iti")
        return {"ok": True}

    monkeypatch.setattr(nb, "run_evaluation", fake_run)
    wb = workbench(quick=True, features_dir=tmp_path / "f", results_dir=tmp_path / "r")
    assert quick_evaluation(wb) == {"ok": True}
    assert capsys.readouterr().out.splitlines() == [f"{STEP_PREFIX}comparison: dev: tuning iti"]


def test_comparison_summary_reads_the_report_defensively(tmp_path):
    def test(mc2, acc, mean, kl):
        return {"truthfulqa": {"mc2": {"mean": mc2, "std": 0.01}, "n": 10}, "toxigen": {"accuracy": {"mean": acc}},
                "mean": {"mean": mean}, "side_effects": {"kl": {"mean": kl}}}

    report = {"methods": {"none": {"label": "No steering", "test": test(0.4, 0.5, 0.45, 0.0)},
                          "mat_steer": {"label": "MAT-Steer", "test": test(0.5, 0.6, 0.55, 0.12),
                                        "new_field": [1, 2]},
                          "odd": "not a method"},
              "reference": {"constant": {"label": "Constant answer",
                                         "test": {"toxigen": {"accuracy": {"mean": 0.62}}}}},
              "selection": {"mat_steer": {"chosen": {}}}, "schema_version": 2}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    table = comparison_summary(tmp_path).splitlines()
    assert table[0].split() == ["method", "truthfulqa", "mc2", "toxigen", "accuracy", "mean", "KL"]
    assert table[2].split() == ["MAT-Steer", "50.0", "60.0", "55.0", "0.120"]
    assert table[3].split() == ["Constant", "answer", "-", "62.0", "-", "-"]  # a reference row, other tasks missing
    (tmp_path / "eval.json").write_text("{truncated")  # unreadable JSON: the markdown table instead
    (tmp_path / "eval.md").write_text("intro\n\n| method | x |\n|---|---|\n| A | 1 |\n\nlater text\n")
    assert comparison_summary(tmp_path) == "| method | x |\n|---|---|\n| A | 1 |"
    assert comparison_summary(tmp_path / "nothing") is None


def test_pyvene_import_notice_is_silenced_at_its_source():
    """pyvene prints "nnsight is not detected..." when imported; matsteer's import of it drops that line only."""
    import subprocess

    code = "import matsteer.steering.intervention; print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "imported\n" and "nnsight" not in proc.stderr


def test_summary_shows_table_folders_and_wall_time(tmp_path):
    from matsteer.app.summary import output_folders, run_summary
    from matsteer.app.timings import NotebookRun

    results = tmp_path / "results"
    results.mkdir()
    (results / "eval.json").write_text(json.dumps({"methods": {"mat_steer": {"label": "MAT-Steer", "test": {
        "truthfulqa": {"mc2": {"mean": 0.5}}, "mean": {"mean": 0.5}}}}}))
    (tmp_path / "figures").mkdir()
    folders = output_folders({"results_dir": str(results), "figures_dir": str(tmp_path / "figures")},
                       [FOLDER / NOTEBOOKS[3]])
    assert folders["results_dir"] == results and folders["features_dir"] == project_root() / "features"  # default
    run = NotebookRun("04_evaluate", FOLDER / NOTEBOOKS[3], tmp_path / "out" / NOTEBOOKS[3], {}, 12.0)
    text = run_summary([run], folders, tmp_path / "out", 754.0)
    assert "1 notebook(s) in 12:34 wall time" in text and "MAT-Steer" in text and "50.0" in text
    assert f"figures             {tmp_path / 'figures'}/" in text and f"{results}/" in text


def test_install_kernel_registers_this_interpreter(tmp_path):
    folder = install_kernel(prefix=tmp_path)
    assert folder == tmp_path / "share" / "jupyter" / "kernels" / KERNEL_NAME
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"].startswith(f"{KERNEL_NAME} (")


def test_papermill_runs_a_notebook_with_a_changed_parameter(tmp_path):
    """papermill's API injects -p values after the `parameters` cell; notebook 02 then looks for features in the
    folder given (empty here), so it stops at the training cell with that folder in its error: no model loads."""
    import papermill

    missing = tmp_path / "no-features"
    with pytest.raises(papermill.PapermillExecutionError, match="01_extract_activations") as err:
        papermill.execute_notebook(str(FOLDER / "02_train_steering.ipynb"), str(tmp_path / "02.ipynb"),
                                   parameters={"features_dir": str(missing), "epochs": 1}, kernel_name="python3",
                                   cwd=str(FOLDER), progress_bar=False)
    assert str(missing) in str(err.value)
    nb = nbformat.read(str(tmp_path / "02.ipynb"), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f"features_dir = {str(missing)!r}" in injected[0].source.replace('"', "'")


@pytest.mark.slow
def test_papermill_runs_notebook_01_quick(tmp_path):
    """The cheapest real notebook end to end through papermill, at another layer than its default."""
    import papermill

    papermill.execute_notebook(str(FOLDER / "01_extract_activations.ipynb"), str(tmp_path / "01.ipynb"),
                               parameters={"layer": 10, "quick": True, "features_dir": str(tmp_path / "features")},
                               kernel_name="python3", cwd=str(FOLDER), progress_bar=False)
    folders = sorted(p.name for p in (tmp_path / "features" / "smollm2-135m-instruct").iterdir())
    assert folders and all("-L10-residual-answer" in name for name in folders)


# ----------------------------------------------------------------------------------------------------------------
# Headless runs on the default model (slow): 01 -> 02 -> 03 -> 05, then 04, sharing folders through parameters


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebooks")
    shared = {"quick": True, "seed": 0, "features_dir": str(base / "features"),
              "steerer_dir": str(base / "steerer"), "figures_dir": str(base / "figures"),
              "results_dir": str(base / "results")}
    runs, times = {}, {}
    for name in ("01", "02", "03", "05"):
        nb = next(n for n in NOTEBOOKS if n.startswith(name))
        declared = notebook_parameters(FOLDER / nb)
        t0 = time.perf_counter()
        # One BLAS thread per kernel: on a shared 2-core runner, 2 OpenMP threads waiting on a busy core are
        # many times slower.
        runs[name] = run_notebook(FOLDER / nb, {k: v for k, v in shared.items() if k in declared},
                                  base / "out", timeout=600, threads=1)
        times[nb] = round(time.perf_counter() - t0, 1)
    (base / "times.json").write_text(json.dumps(times, indent=1))
    print("notebook wall times (s):", times)
    return base, shared, runs


def _outputs(run) -> list:
    nb = nbformat.read(str(run.output), as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _has_image(run) -> bool:
    return any("image/png" in o.get("data", {}) for o in _outputs(run))


@pytest.mark.slow
def test_01_extracts_features(executed):
    base, _, runs = executed
    folders = sorted(p.name for p in (base / "features" / "smollm2-135m-instruct").iterdir())
    assert folders == sorted(f"{ds}-{split}-L14-residual-answer" for ds in ("truthfulqa", "toxigen", "bbq")
                             for split in ("train", "dev"))
    text = json.dumps([o.get("data", o.get("text")) for o in _outputs(runs["01"])])
    assert "mean k(x,y)" in text and "truthfulness" in text


@pytest.mark.slow
def test_02_trains_and_saves_steerer(executed):
    base, _, runs = executed
    from matsteer.store.artifacts import load_history, load_steerer

    steerer, manifest = load_steerer(base / "steerer")
    assert steerer.attributes == ["truthfulness", "toxicity", "bias"] and manifest["site"]["layer"] == 14
    assert load_history(base / "steerer").epochs == 5
    assert (base / "figures" / "training_curves.png").stat().st_size > 0
    assert _has_image(runs["02"])


@pytest.mark.slow
def test_03_saves_figures(executed):
    base, _, runs = executed
    for name in ("pca_steered", "orthogonality", "gate_distributions", "token_gates", "paradetox_gates"):
        for ext in ("png", "pdf"):
            assert (base / "figures" / f"{name}.{ext}").stat().st_size > 0
    assert sum("image/png" in o.get("data", {}) for o in _outputs(runs["03"])) >= 5


@pytest.mark.slow
def test_05_tuner_generates_headless(executed):
    _, _, runs = executed
    outs = _outputs(runs["05"])
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outs)
    text = "".join(o.get("text", "") for o in outs if o["output_type"] == "stream")
    assert "unsteered:" in text and "steered  :" in text
    assert any("truthfulqa" in o.get("data", {}).get("text/plain", "") for o in outs)  # the dev scores


@pytest.mark.slow
def test_04_evaluates(executed):
    base, shared, _ = executed
    nb = next(n for n in NOTEBOOKS if n.startswith("04"))
    declared = notebook_parameters(FOLDER / nb)
    t0 = time.perf_counter()
    run = run_notebook(FOLDER / nb, {k: v for k, v in shared.items() if k in declared}, base / "out", timeout=600,
                       threads=1)
    print(f"{nb}: {time.perf_counter() - t0:.1f} s")
    report = json.loads((base / "results" / "eval.json").read_text())
    assert "mat_steer" in report["methods"] and (base / "results" / "eval.md").is_file()
    for name in ("method_table", "method_comparison"):
        assert (base / "figures" / f"{name}.png").stat().st_size > 0
    outs = _outputs(run)
    assert any("text/markdown" in o.get("data", {}) for o in outs) and _has_image(run)
