"""The package's stages import one way, down the pipeline, at module top level, with no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import matsteer

ROOT = Path(matsteer.__file__).resolve().parent
# Lower stages first; a module may import its own stage and the ones before it. errors, files and _lazy (the
# packages' lazy attributes) serve every stage.
BASES = ("errors", "files", "_lazy")
STAGES = (*BASES, "data", "activations", "core", "store", "steering", "eval", "viz", "app")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the facade (matsteer/__init__.py, __main__) sits above every stage
        return len(STAGES)
    return STAGES.index(parts[1]) if parts[1] in STAGES else len(STAGES)


def _imports() -> dict[str, list[tuple[str, int, bool]]]:
    """{module: [(imported matsteer module, line, at top level)]} for every module of the package."""
    found: dict[str, list[tuple[str, int, bool]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        # A package's lazy names are imported under a top-level `if TYPE_CHECKING:`: edges like any other.
        top |= {id(n) for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
                for n in node.body}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; import matsteer.<stage>... absolutely")
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name == "matsteer" or name.startswith("matsteer."):
                    edges.append((name, node.lineno, id(node) in top))
        found[_module_name(path)] = edges
    return found


def test_every_stage_is_a_package_in_order():
    assert [s for s in STAGES if (ROOT / s).is_dir()] == list(STAGES[len(BASES):])
    assert {p.stem for p in ROOT.glob("*.py")} == {"__init__", "__main__", *BASES}


def test_imports_point_down_at_top_level():
    problems = []
    for module, edges in _imports().items():
        for target, line, at_top in edges:
            if not at_top:
                problems.append(f"{module}:{line} imports {target} inside a function")
            elif _stage(target) > _stage(module):
                problems.append(f"{module}:{line} imports {target}, a later stage")
    assert problems == []


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in edges if t in _imports_keys()} for m, edges in _imports().items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _imports_keys() -> set[str]:
    return {_module_name(p) for p in ROOT.rglob("*.py")}
