"""Layers point one way: jobs/ (entry points, pipeline) -> actors/ (inference) -> datasets/
(data, evaluation); no module imports one above its layer, and no imports go in a circle.
Every import counts, at the top of a module or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"datasets": 0, "actors": 1, "jobs": 2}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports(path: Path) -> set[str]:
    """The project modules a file imports (`from jobs import x` counts as jobs.x where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in LAYERS}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    return {name: {m for m in our_imports(path) if m in files and m != name} for name, path in files.items()}


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                    if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]])
    assert not upward, upward


def test_no_import_circles():
    deps = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(deps[node]):
            if state.get(dep) == 1:
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(deps):
        if node not in state:
            visit(node, [node])
    assert not circles, circles


def test_the_checker_sees_what_it_checks():
    """It finds the known edges (a checker that parsed nothing would pass the tests above)."""
    deps = graph()
    assert "actors.model" in deps["actors.actor"]
    assert "datasets.base" in deps["actors.actor"]
    assert "jobs.driver" in deps["jobs.cli"]  # a lazy import inside a function
    assert len(deps) > 30
