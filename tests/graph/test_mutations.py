"""Mutation test of ``ptc check``: every small mistake in a shipped graph is either rejected in at most a few
lines, each naming the file, or provably harmless (the graph checks and the changed number lies in the
parameter's declared range), within a bounded time and memory per check. A removed ``!sg`` that the validator
accepts must be harmless or draw the collapse warning (SimSiam without its stop-gradient).

The fast test checks a stratified sample of the ~2000 mutants of graphs/*.yaml (see tests/graph/mutants.py): every
mutation kind of every graph, two of the six bad-number forms per graph; the sample is fixed (``_rotation``;
``PTC_MUTANT_SEED=N`` checks rotation N). ``PTC_ALL_MUTANTS=1`` checks them all; see tools/all_mutants.py to
run them one graph at a time and list the failures.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

import composer
from composer.blocks.registry import range_by_name
from composer.cli import main
from composer.runtime.schedules import Schedule

sys.path.insert(0, str(Path(__file__).parent))
from mutants import FORMS, Mutant, mutants  # noqa: E402

GRAPHS = sorted(Path(__file__).resolve().parents[2].joinpath("graphs").glob("*.yaml"))
ALL = [(path, m) for path in GRAPHS for m in mutants(path.read_text())]
FORMS_IN_ORDER = tuple(FORMS.values())
MAX_LINES = 3  # one cause, one line; a mutant may break two things at once (a value and its only user)
MAX_SECONDS = 60.0  # per check, with the full-size dry run of the largest graph (ViT-H/14) on the meta device
MAX_RSS_GIB = 6.0  # peak resident memory of the whole test process


def _rotation() -> int:
    """Which slice of each stratum the test checks: ``PTC_MUTANT_SEED`` when set, else 0. Fixed by default so that
    CI's verdict changes only with the code; ``PTC_MUTANT_SEED=1`` and ``2`` check the other number forms of each
    graph (tools/all_mutants.py checks every mutant)."""
    seed = os.environ.get("PTC_MUTANT_SEED")
    return int(seed) if seed else 0


def _sample(rotation: int | None = None) -> list[tuple[Path, Mutant]]:
    """Stratified by graph and kind: for every graph, one mutant of each structural kind it has (removed ``!sg``,
    misspelt type, deleted flow line, cycle) and two bad numbers, whose forms (NaN, negative, zero, huge, a digit
    more, a string) turn with the rotation and the graph, so each run checks every form on some graph and three
    rotations check every form on every graph. Within a stratum the mutant is drawn from a
    generator seeded with the rotation and the graph."""
    rotation = _rotation() if rotation is None else rotation
    picked = []
    for g, path in enumerate(GRAPHS):
        rng = random.Random(f"{rotation}:{path.stem}")
        own = [m for p, m in ALL if p == path]
        for kind in ("sg", "type", "flow", "cycle"):
            of_kind = [m for m in own if m.kind == kind]
            if of_kind:
                picked.append((path, rng.choice(of_kind)))
        for half in (0, len(FORMS_IN_ORDER) // 2):  # two forms per graph and run: three runs cover all six
            form = FORMS_IN_ORDER[(rotation + g + half) % len(FORMS_IN_ORDER)]
            numbers = [m for m in own if m.kind == "number" and m.form == form]
            if numbers:
                picked.append((path, rng.choice(numbers)))
    return picked


def _run(path: Path, mutant: Mutant, tmp_path: Path, keep: bool = False) -> tuple[int, list[str], str]:
    """Check ``mutant`` written over its graph in a copy of graphs/ (so that ``extends:`` resolves)."""
    folder = tmp_path / "graphs"
    if not folder.exists():
        shutil.copytree(path.parent, folder)
    target = folder / path.name
    target.write_text(mutant.text)
    args = ["check", str(target)] + (["--variant", "tiny"] if mutant.section == "tiny" else [])
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(args)
    if not keep:
        shutil.copy(path, target)
    return status, [line for line in err.getvalue().splitlines() if line.strip()], str(target)


def _harmless(path: Path, mutant: Mutant, target: str) -> str | None:
    """Why a mutant that checks is harmless, or None when nothing shows it."""
    if mutant.kind == "sg":
        return _gradient_free_sg(path, target)
    if mutant.kind != "number":
        return None
    spec = composer.load(path, variant="tiny" if mutant.section == "tiny" else None)
    block = spec.blocks.get(mutant.block)
    value = yaml.safe_load(mutant.value)
    if block is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if mutant.param == getattr(block.info.cls, "expression_param", None) and math.isfinite(value):
        return f"a finite constant of the program in {mutant.block}.{mutant.param}"  # a loss's scale, not a range
    param = block.info.params.get(mutant.param)
    bounds = param.range if param is not None else None
    for name, v in block.params.items():  # a key inside a mapping: a schedule's values, timm's model_args
        if bounds is None and isinstance(v, dict) and mutant.param in v:
            outer = block.info.params.get(name)
            schedule = outer is not None and outer.annotation is Schedule
            bounds = outer.range if schedule else range_by_name(mutant.param)
        in_list = isinstance(v, list) and any(isinstance(x, dict) and mutant.param in x for x in v)
        if bounds is None and in_list:  # a key of one entry of a list of mappings (augment.views' views)
            bounds = range_by_name(mutant.param)
    if bounds is not None and bounds.violation(value) is None:
        return f"{mutant.param}={value} is within {bounds.describe()}"
    return None


def _gradient_free_sg(path: Path, target: str) -> str | None:
    """A removed ``!sg`` is harmless when, in the graph and in each of its variants, the value it stopped depends
    on no trainable parameter (e.g. ids of a frozen tokenizer), or the value it fed reaches no objective (the
    input of a state update, or a value computed only for one): the gradient it would carry has nowhere to go."""
    variants = [None, *(composer.load(path).data.get("variants") or {})]
    reasons = [_gradient_free_in(path, target, v) for v in variants]
    if any(r is None for r in reasons):
        return None
    return "; ".join(r for r in reasons if r) or None


def _gradient_free_in(path: Path, target: str, variant: str | None) -> str | None:
    """``_gradient_free_sg`` for one variant: "" when nothing was freed there, None when not shown harmless."""
    import networkx as nx

    from composer.graph.compile import build_blocks, dependency_graph
    before, after = composer.load(path, variant=variant), composer.load(target, variant=variant)
    def edges(spec):  # node inputs and state-update inputs
        out = {(n.name, port): e for n in spec.nodes.values() for port, e in n.inputs.items()}
        out.update({("update", b, port): e for b, ports in spec.updates.items() for port, e in ports.items()})
        return out

    freed = [(key, e.src) for key, e in edges(after).items()
             if key in edges(before) and edges(before)[key].sg and not e.sg]
    if not freed:
        return ""
    modules = build_blocks(after, "meta")
    trainable = {b for b, m in modules.items() if any(p.requires_grad for p in m.parameters())}
    g = dependency_graph(after)
    for key, src in freed:
        upstream = nx.ancestors(g, src) | {src}
        reaches = key[0] != "update" and any(key[0] == t or nx.has_path(g, key[0], t) for t in after.objective)
        if reaches and any(after.nodes[n].kind == "call" and after.nodes[n].block in trainable for n in upstream):
            return None
    return f"{variant or 'graph'}: the values {[src for _, src in freed]} depend on no trainable parameter or " \
           "reach no objective"


def _verify(path: Path, mutant: Mutant, tmp_path: Path) -> None:
    start = time.perf_counter()
    status, lines, target = _run(path, mutant, tmp_path, keep=True)
    seconds = time.perf_counter() - start
    assert seconds < MAX_SECONDS, f"{mutant.id}: the check took {seconds:.0f} s"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    if status == 2:
        errors = [line for line in lines if ": warning: " not in line]
        assert 1 <= len(errors) <= MAX_LINES, f"{mutant.id}:\n" + "\n".join(errors)
        for line in errors:
            assert line.startswith(target + ":"), f"{mutant.id}: {line}"
    else:
        assert status == 0, lines
        if mutant.kind == "sg" and _collapse_reported(lines, target):
            return  # a removed stop-gradient that lets the loss collapse (SimSiam): the check warns, naming the file
        assert _harmless(path, mutant, target), f"{mutant.id} of {path.name} checks ok but is not known to be harmless"


def _collapse_reported(lines: list[str], target: str) -> bool:
    """Whether the check printed the collapse warning (composer/graph/collapse.py) for the mutated file."""
    return any(line.startswith(target + ":") and ": warning: " in line and "can collapse" in line for line in lines)


SAMPLE = _sample()


@pytest.mark.parametrize("path,mutant", SAMPLE, ids=[f"{p.stem}:{m.id}" for p, m in SAMPLE])
def test_sampled_mutant(path, mutant, tmp_path):
    _verify(path, mutant, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PTC_ALL_MUTANTS"), reason="exhaustive: set PTC_ALL_MUTANTS=1")
@pytest.mark.parametrize("path,mutant", ALL, ids=[f"{p.stem}:{m.id}" for p, m in ALL])
def test_every_mutant(path, mutant, tmp_path):
    _verify(path, mutant, tmp_path)


def test_mutants_cover_every_graph_and_kind():
    kinds = {m.kind for _, m in ALL}
    assert kinds == {"sg", "type", "flow", "cycle", "number"}
    assert {p for p, _ in ALL} == set(GRAPHS)


def test_sample_is_stratified_and_its_rotations_cover_every_stratum():
    """Each run: every kind a graph has, on that graph; three rotations: every number form on every graph."""
    strata = {(p, m.kind, m.form) for p, m in ALL}
    kinds_of = {(p, m.kind) for p, m in ALL}
    seen = set()
    for rotation in range(len(FORMS_IN_ORDER) // 2):
        sample = _sample(rotation)
        assert sample == _sample(rotation)  # deterministic
        assert {(p, m.kind) for p, m in sample} == kinds_of
        assert len({m.form for _, m in sample if m.kind == "number"}) == len(FORMS_IN_ORDER)
        seen |= {(p, m.kind, m.form) for p, m in sample}
    assert {s for s in strata if s[1] == "number"} <= seen


def test_memory_stays_bounded():
    """Runs last in this file: the peak RSS over all checks above (ru_maxrss is in KiB on Linux)."""
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    assert peak_gib < MAX_RSS_GIB
