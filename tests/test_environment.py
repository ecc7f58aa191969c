"""environment.yaml and pyproject.toml list the same dependencies with the same version bounds."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _normalise(req: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_environment_yaml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    pip_lines = [line.strip()[2:] for line in (ROOT / "environment.yaml").read_text().splitlines()
                 if line.startswith("      - ") and not line.strip().startswith("- -e")]
    listed = dict(_normalise(r) for r in pip_lines)
    assert listed == wanted
    assert "python=3.11" in (ROOT / "environment.yaml").read_text()


def test_makefile_pins_cpu_torch_and_ci_calls_make_test():
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
