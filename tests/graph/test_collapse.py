"""The collapse warning: SimSiam without its stop-gradient is warned about, with the values it lacks a guard for;
losses that are their own guard (declared by the block class or by the graph's ``guards:``) are not."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import composer
from composer.blocks import block, registry
from composer.runtime.errors import GraphErrors

SIAMESE = "tests/graphs/render_siamese.yaml"   # SimSiam-like: predictor on one branch, !sg on the other's target
NO_SG = {"flow.loss.distance.target": "z2"}


def warnings_of(overrides=None):
    return composer.check(composer.load(SIAMESE, overrides), dry_run=False).warnings


@pytest.fixture
def redundancy_loss():
    """A Barlow-Twins-like loss block that declares itself its own guard (removed from the registry after)."""
    @block("loss.test_redundancy")
    class Redundancy(nn.Module):
        collapse_guard = "redundancy reduction"

        def forward(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
            c = (za - za.mean(0)).T @ (zb - zb.mean(0)) / za.shape[0]
            return ((torch.diagonal(c) - 1) ** 2).sum()

    yield "loss.test_redundancy"
    registry._REGISTRY.pop("loss.test_redundancy")


def test_simsiam_with_its_stop_gradient_is_not_warned():
    assert warnings_of() == []


def test_simsiam_without_stop_gradient_is_warned_with_the_values_and_blocks():
    (warning,) = warnings_of(NO_SG)
    assert warning.startswith("<--set>: warning: node 'loss': loss 'distance' (loss.smooth_l1) can collapse")
    assert "'pred' from 'p1' (through predictor, projector, encoder)" in warning
    assert "'target' from 'z2' (through projector, encoder)" in warning
    assert "no !sg on an input" in warning and "'guards: {distance: REASON}'" in warning
    assert "\n" not in warning


def test_a_loss_that_is_its_own_guard_is_not_warned(redundancy_loss):
    assert warnings_of({"blocks.distance": "{type: loss.test_redundancy}", "flow.loss.distance": None,
                        "flow.loss": "{distance: {za: p1, zb: z2}}"}) == []


def test_the_graph_declares_a_guard_for_a_loss():
    assert warnings_of({**NO_SG, "guards": "{distance: variance regularisation}"}) == []


@pytest.mark.parametrize("guards, fragment", [
    ("{distanc: x}", "guards: 'distanc' is not a block of this graph (did you mean 'distance'?)"),
    ("{encoder: x}", "guards: 'encoder' is a encoder.timm block, not a loss"),
    ("{distance: ''}", "guards.distance: the reason must be a non-empty text"),
    ("[distance]", "'guards' must be a mapping"),
])
def test_malformed_guards_are_one_line_errors(guards, fragment):
    with pytest.raises(GraphErrors) as info:
        warnings_of({"guards": guards})
    (error,) = info.value.errors
    assert fragment in error.format() and "\n" not in error.format()
