"""Contract tests over graphs/: every shipped graph (and its tiny variant) checks, and the tiny one steps."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import composer
from composer.graph.shapes import example_batch

GRAPHS = sorted(Path(__file__).resolve().parents[2].joinpath("graphs").glob("*.yaml"))


def test_there_are_graphs():
    assert len(GRAPHS) >= 5


@pytest.mark.parametrize("path", GRAPHS, ids=[p.stem for p in GRAPHS])
def test_graph_checks_at_full_size(path):
    spec = composer.load(path)
    report = composer.check(spec)
    assert not report.warnings
    assert spec.data.get("paper"), "each graph cites its paper"
    assert spec.embedding, "each graph names the encoder used by probes and export"


@pytest.mark.parametrize("path", GRAPHS, ids=[p.stem for p in GRAPHS])
def test_tiny_variant_steps(path):
    spec = composer.load(path, variant="tiny")
    if "tiny" not in (composer.load(path).data.get("variants") or {}):
        pytest.skip("no tiny variant")
    torch.manual_seed(0)
    try:
        model = composer.build(spec)
    except composer.GraphErrors as e:
        if "no tokenizer checkpoint" in str(e):  # BEiT needs its trained tokenizer (test_masked_graphs makes one)
            pytest.skip(str(e.errors[0].message))
        raise
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    batch = model.data_stage(example_batch(spec, 4))
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    model.update(out, 0)
