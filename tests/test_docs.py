"""The README and docs/ stay true: the README is a front door, the "where things are" table
matches the tree, and every `rayinfer` command shown parses with the CLI's own parser."""

from __future__ import annotations

import re
import shlex

import pytest

from rayinfer.jobs.cli import build_parser
from tests.conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PACKAGES = ("actors", "datasets", "jobs")


def test_the_readme_is_a_front_door_and_links_every_doc():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines() == ["pip install -e . && rayinfer run coco",
                                        'pip install -e ".[test]" && python -m pytest -q']
    for doc in DOCS:
        assert f"(docs/{doc.name})" in text, doc.name


def _table_modules() -> set[str]:
    """Every module the architecture table names, as FOLDER/NAME.py."""
    text = (ROOT / "docs/architecture.md").read_text()
    table = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    named, folder = set(), None
    for row in (r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| folder")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        folder = cells[0].strip("`").rstrip("/") or folder
        named |= {f"{folder}/{m}" for m in re.findall(r"`([\w]+\.py)`", cells[1])}
    return named


def test_the_where_things_are_table_matches_the_tree():
    named = _table_modules()
    present = {str(p.relative_to(ROOT)) for pkg in (*PACKAGES, "benchmarks", "tests/support")
               for p in (ROOT / pkg).rglob("*.py")
               if "demo_models" not in p.parts and p.name != "__init__.py" or
               (p.name == "__init__.py" and p.parent.name in ("api", "backends", "families", "tasks"))}
    assert not named - present, f"named in docs/architecture.md but not in the tree: {sorted(named - present)}"
    assert not present - named, f"in the tree but not in docs/architecture.md: {sorted(present - named)}"


def _commands() -> list[tuple[str, str]]:
    """(file, command) for each `rayinfer ...` line of a fenced block in the README and docs/."""
    out = []
    for path in [ROOT / "README.md", *DOCS]:
        for block in re.findall(r"```(?:bash)?\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.splitlines():
                if not re.match(r"^([A-Z_]+=\S+\s+)*rayinfer\s", line):
                    continue
                words = shlex.split(line, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the command
                    words.pop(0)
                if words[:1] == ["rayinfer"]:
                    out.append((path.name, " ".join(w for w in words[1:] if w != "...")))
    return out


@pytest.mark.parametrize("where,command", _commands())
def test_every_rayinfer_command_in_the_docs_parses(where, command):
    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit as exc:
        pytest.fail(f"{where}: `rayinfer {command}` does not parse (exit {exc.code})")


def test_there_are_commands_to_check():
    assert len(_commands()) >= 15


def test_no_history_or_machine_narration_outside_performance_md():
    pattern = re.compile(r"2 vCPU|this machine|Runs? [0-9]+ (is|are) ", re.I)
    files = [ROOT / "README.md", *DOCS] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in files if p.name != "performance.md"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
