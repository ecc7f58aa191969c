"""The lazy facade: ``import matsteer`` / ``matsteer.core`` and the CLI's ``--help`` load none of the heavy stages,
and every public name still resolves to the object its defining module holds."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import matsteer
from matsteer.app import cli

ROOT = Path(matsteer.__file__).resolve().parent
#: What a light import must leave out of sys.modules (torch is fine for the core, not for the CLI's parser).
HEAVY = ("pyvene", "matplotlib", "seaborn", "ipywidgets", "nbclient", "papermill", "peft", "trl", "lm_eval")
PACKAGES = ("matsteer", *(f"matsteer.{p.name}" for p in sorted(ROOT.iterdir()) if (p / "__init__.py").is_file()))


def _run(code: str) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned parsed."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loaded_after(statement: str) -> list[str]:
    return _run(f"""
        import json, sys
        {statement}
        print(json.dumps([name for name in {HEAVY + ("torch",)!r} if name in sys.modules]))
    """)


def test_import_core_and_facade_load_no_heavy_stage():
    assert _loaded_after("import matsteer") == []
    assert _loaded_after("import matsteer.core") == []
    assert _loaded_after("import matsteer.data") == []
    assert set(_loaded_after("import matsteer.core.losses")) <= {"torch"}
    assert set(_loaded_after("import matsteer.core.training; import matsteer.core.baselines")) <= {"torch"}


def _typing_imports(package: str) -> dict[str, str]:
    """{name: defining module} from the ``if TYPE_CHECKING:`` block of the package's ``__init__``."""
    path = Path(importlib.import_module(package).__file__ or "")
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module, ast.dump(imp)
                found.update({alias.asname or alias.name: imp.module for alias in imp.names})
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_its_defining_object(package):
    pkg = importlib.import_module(package)
    names = list(getattr(pkg, "__all__", []))
    typed = _typing_imports(package)
    table = {name: module for module, group in getattr(pkg, "_EXPORTS", {}).items() for name in group}
    # The three lists agree: __all__, the lazy table and what type checkers see.
    assert sorted(names) == sorted(table) == sorted(typed)
    assert table == typed
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(pkg, name) is getattr(importlib.import_module(table[name]), name), name
    assert set(names) <= set(dir(pkg))
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018


def test_star_import_and_submodules_as_attributes():
    space: dict = {}
    exec("from matsteer import *", space)
    assert set(matsteer.__all__) <= set(space)
    assert matsteer.core.steerer.Steerer is matsteer.Steerer  # a stage, then its module, on first use
    assert matsteer.data.registry.DATASETS is matsteer.data.DATASETS
    assert matsteer.__version__


def test_help_of_every_command_imports_no_library():
    commands = sorted(_subcommands(cli.build_parser()))
    out = _run(f"""
        import contextlib, io, json, sys
        from matsteer.app import cli
        codes = {{}}
        for argv in [["--help"]] + [[c, "--help"] for c in {commands!r}]:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    cli.main(argv)
                except SystemExit as exc:
                    codes[" ".join(argv)] = exc.code
        print(json.dumps({{"codes": codes, "loaded": [n for n in {HEAVY + ("torch",)!r} if n in sys.modules]}}))
    """)
    assert out["loaded"] == []
    assert out["codes"] == {" ".join(a): 0 for a in [["--help"]] + [[c, "--help"] for c in commands]}
    assert {"train", "extract", "harness", "export-control-vector"} <= set(commands)
    for argv in (["--help"], ["train", "--help"]):  # the installed entry point's module, too
        proc = subprocess.run([sys.executable, "-m", "matsteer", *argv], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: matsteer"), proc.stderr


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_names_a_function():
    for name, p in _subcommands(cli.build_parser()).items():
        func = p.get_default("func")
        assert isinstance(func, cli.Command), name
        assert callable(getattr(importlib.import_module(func.module), func.name)), name


def test_command_runs_the_function_it_names(monkeypatch):
    import matsteer.app.commands as C

    seen = []
    monkeypatch.setattr(C, "cmd_figures", lambda args: seen.append(args.out) or 7)
    assert cli.main(["figures", "--out", "x"]) == 7 and seen == ["x"]


def test_cli_copies_of_library_choices_match():
    from matsteer.activations.models import DEFAULT_MODEL, DTYPE_CHOICES
    from matsteer.eval.ablations import ABLATIONS
    from matsteer.steering.intervention import POSITIONS

    assert (cli.DEFAULT_MODEL, cli.DTYPE_CHOICES, cli.ABLATIONS, cli.POSITIONS) == (
        DEFAULT_MODEL, DTYPE_CHOICES, ABLATIONS, POSITIONS)


def test_cli_harness_command_is_the_harness_modules():
    from matsteer.eval.harness import cmd_harness

    func = _subcommands(cli.build_parser())["harness"].get_default("func")
    assert getattr(importlib.import_module(func.module), func.name) is cmd_harness
