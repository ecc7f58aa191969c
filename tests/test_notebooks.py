"""The five notebooks: committed clean, logic-free and parameterised; run_notebook's checks; headless runs (slow)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest

from matsteer.errors import ConfigError
from matsteer.notebooks import (
    NOTEBOOKS,
    NotebookExecutionError,
    notebook_parameters,
    notebooks_dir,
    project_root,
    run_notebook,
    strip_outputs,
    workbench,
)

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
    assert nb.metadata["kernelspec"]["name"] == "python3"
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
    from matsteer.artifacts import load_history, load_steerer

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
