"""Size mismatches in words: the failing layer's declared size against the size it got."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from composer.graph.mismatch import LeafTracker, expectation, parameter_holding


@pytest.mark.parametrize("module, x, found", [
    (nn.Linear(64, 8), torch.zeros(2, 96), ("features", 64, 96, -1)),
    (nn.Conv2d(3, 8, 3), torch.zeros(2, 4, 8, 8), ("channels", 3, 4, 1)),
    (nn.Conv2d(3, 8, 3), torch.zeros(4, 8, 8), ("channels", 3, 4, 0)),        # unbatched
    (nn.BatchNorm1d(16), torch.zeros(2, 12), ("channels", 16, 12, 1)),
    (nn.LayerNorm(32), torch.zeros(2, 5, 24), ("features", (32,), (24,), -1)),
    (nn.GroupNorm(2, 8), torch.zeros(2, 6, 4), ("channels", 8, 6, 1)),
])
def test_expectation_reads_the_declared_size(module, x, found):
    assert expectation(module, (x,)) == found


def test_tracker_finds_the_innermost_failing_layer():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Sequential(nn.Linear(5, 2)))
    with LeafTracker() as tracker, pytest.raises(RuntimeError):
        net(torch.zeros(3, 4))
    module, args = tracker.failing()
    assert module is net[2][0] and args[0].shape == (3, 6)
    with LeafTracker() as tracker:
        nn.Linear(4, 6)(torch.zeros(3, 4))
    assert tracker.failing() is None                   # every module returned


def test_parameter_holding_names_the_list_entry():
    assert parameter_holding({"dims": [2048, 16], "bias": True}, 2048) == "dims[0]"
    assert parameter_holding({"in_dim": 24}, 24) == "in_dim"
    assert parameter_holding({"bias": True}, 1) is None
