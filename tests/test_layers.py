"""Layers point one way: jobs/ (entry points, pipeline) -> actors/ (inference) -> datasets/
(data, evaluation); no module imports one above its layer, and no imports go in a circle.
Every import counts, at the top of a module or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"datasets": 0, "actors": 1, "jobs": 2}


def module_name(path: Path) -> str:
    """jobs/cli.py -> rayinfer.jobs.cli (the name it is installed and imported under)."""
    parts = ["rayinfer"] + list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def our_imports(path: Path) -> set[str]:
    """The project modules a file imports (`from rayinfer.jobs import x` counts as rayinfer.jobs.x where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "rayinfer"}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for folder in LAYERS for p in (ROOT / folder).rglob("*.py")
             if (p.parent / "__init__.py").exists()}
    return {name: {m for m in our_imports(path) if m in files and m != name} for name, path in files.items()}


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                    if layer(b) > layer(a))
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
    assert "rayinfer.actors.model" in deps["rayinfer.actors.actor"]
    assert "rayinfer.datasets.base" in deps["rayinfer.actors.actor"]
    assert "rayinfer.jobs.driver" in deps["rayinfer.jobs.cli"]  # a lazy import inside a function
    assert len(deps) > 30


def test_our_code_is_imported_by_its_installed_name_only():
    """`import datasets` would be Hugging Face's: every import of ours says `rayinfer.`, and no
    module (tests included) edits sys.path to make a bare name work."""
    bare, path_edits = [], []
    for path in [p for folder in (*LAYERS, "tests") for p in (ROOT / folder).rglob("*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bare += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in LAYERS]
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"):
                path_edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bare, bare
    assert not path_edits, path_edits


def test_the_job_config_provides_what_the_actors_read():
    """actors/ is typed against `ActorSettings` (it never imports jobs/): every field it
    names is a JobConfig field of the same type, and every `cfg.X` read in actors/ is one."""
    import re
    import typing

    from rayinfer.actors.settings import ActorSettings
    from rayinfer.jobs.config import JobConfig

    wanted = typing.get_type_hints(ActorSettings)
    have = typing.get_type_hints(JobConfig)
    assert {name: have.get(name) for name in wanted} == wanted
    read = {m for p in (ROOT / "actors").rglob("*.py") for m in re.findall(r"\bcfg\.([a-z_][a-z_0-9]*)", p.read_text())}
    assert read and read <= set(wanted), sorted(read - set(wanted))
