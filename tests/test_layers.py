"""The package reads as the pipeline: each stage imports only from itself and the stages before it.

    runtime → data → blocks → graph → draw → evaluate → train → cli      (composer/__init__.py forwards to all)

Blocks use the runtime and the registry only; the language (composer.graph) reaches blocks only through
``composer.blocks.registry``. Every import counts, also one inside a function. Also checked: no module over 500
lines, and no module named after its package with a prefix (``train/train_config.py``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "composer"
STAGES = ("runtime", "data", "blocks", "graph", "draw", "evaluate", "train", "cli")
FACADE = {"composer/__init__.py", "composer/__main__.py"}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import in ``source``; ``from a import b`` yields ``a.b``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def stage_of(dotted: str) -> str | None:
    """``composer.graph.spec`` → ``graph``; the bare package ``composer`` → ``facade``; others → None."""
    parts = dotted.split(".")
    if parts[0] != "composer":
        return None
    if len(parts) == 1 or parts[1] not in STAGES:
        return "facade"
    return parts[1]


def violations(relpath: str, source: str) -> list[str]:
    """Every import in the module at ``relpath`` (``composer/<stage>/...``) that breaks the layering."""
    own = relpath.split("/")[1]
    bad = []
    for line, name in imported_modules(source):
        target = stage_of(name)
        if target is None or target == own:
            continue
        where = f"{relpath}:{line} imports {name}"
        if target == "facade":
            bad.append(f"{where}: a stage must not import the facade 'composer' (import the stage module)")
        elif STAGES.index(target) > STAGES.index(own):
            bad.append(f"{where}: stage '{own}' may not import the later stage '{target}'")
        elif own == "blocks" and target != "runtime":
            bad.append(f"{where}: blocks import only the runtime and the registry")
        elif own == "graph" and target == "blocks" and not name.startswith("composer.blocks.registry"):
            bad.append(f"{where}: the language reaches blocks only through composer.blocks.registry")
    return bad


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_belongs_to_a_stage():
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        assert rel in FACADE or rel.split("/")[1] in STAGES, f"{rel} is outside the stage packages {STAGES}"


def test_imports_follow_the_pipeline():
    bad = []
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel not in FACADE:
            bad += violations(rel, path.read_text())
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("relpath, source, expected", [
    ("composer/blocks/memory.py", "from composer.train import launch", "later stage 'train'"),
    ("composer/blocks/ops.py", "def f():\n    import composer.data.shapes", "only the runtime"),
    ("composer/graph/spec.py", "from composer.blocks.teacher import EMATeacher", "only through"),
    ("composer/train/loop.py", "import composer", "facade"),
    ("composer/runtime/errors.py", "from composer.cli.common import graph_options", "later stage 'cli'"),
])
def test_the_checker_catches_a_crossing(relpath, source, expected):
    found = violations(relpath, source)
    assert len(found) == 1 and expected in found[0]


def test_the_checker_allows_earlier_stages():
    assert violations("composer/graph/spec.py", "from composer.blocks import registry\n"
                                                "from composer.runtime.errors import GraphError") == []
    assert violations("composer/cli/train.py", "from composer.train import train\nimport torch") == []


def test_files_are_small_and_named_without_their_package():
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        assert len(path.read_text().splitlines()) <= 500, f"{rel} is over 500 lines"
        package = path.parent.name
        assert not path.stem.startswith(package + "_"), f"{rel} repeats its package name as a prefix"
