"""environment.yaml and pyproject.toml list the same dependencies with the same version bounds."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _normalise(req: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def _requirements(project: dict, extra: str) -> list[str]:
    """An extra's requirements with self-references (``matsteer[notebooks,judge]``) expanded."""
    out = []
    for req in project["optional-dependencies"][extra]:
        name, spec = _normalise(req)
        if name == project["name"]:
            for inner in spec.strip("[]").split(","):
                out += _requirements(project, inner.strip())
        else:
            out.append(req)
    return out


def test_extras_match_use():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: {_normalise(r)[0] for r in _requirements(project, name)} for name in project["optional-dependencies"]}
    assert {"nbclient", "nbformat", "ipykernel", "papermill", "ipywidgets", "jupyterlab"} <= extras["notebooks"]
    assert "openai" in extras["judge"]
    assert extras["notebooks"] | extras["judge"] <= extras["test"]  # make test installs everything
    core = {_normalise(r)[0] for r in project["dependencies"]}
    assert {"gguf", "huggingface-hub"} <= core and not core & {"openai", "papermill", "jupyterlab"}


def test_environment_yaml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_normalise(r) for r in project["dependencies"] + _requirements(project, "test"))
    pip_lines = [line.strip()[2:] for line in (ROOT / "environment.yaml").read_text().splitlines()
                 if line.startswith("      - ") and not line.strip().startswith("- -e")]
    listed = dict(_normalise(r) for r in pip_lines)
    assert listed == wanted
    assert "python=3.11" in (ROOT / "environment.yaml").read_text()


def test_makefile_pins_cpu_torch_and_ci_calls_make_test():
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
