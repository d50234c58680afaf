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


@pytest.mark.parametrize("old, new, line", [
    ("projector: {dims: [64, 256, 256, 64]}", "projector: {dims: [641, 256, 256, 64]}", 22),  # the size-setter
    ("predictor: {dims: [64, 256, 64]}", "predictor: {dims: [64, 256, 641]}", 23),  # a loss in the base fails
])
def test_a_failure_in_a_base_graphs_flow_points_at_the_child_line_that_caused_it(tmp_path, capsys, old, new, line):
    """moco_v3_vit.yaml extends moco_v3.yaml: the failing nodes are written in the base, the sizes in the child."""
    import shutil
    from pathlib import Path

    from composer.cli import main
    graphs = Path(__file__).resolve().parents[2] / "graphs"
    for name in ("moco_v3.yaml", "moco_v3_vit.yaml"):
        shutil.copy(graphs / name, tmp_path / name)
    child = tmp_path / "moco_v3_vit.yaml"
    assert old in child.read_text()
    child.write_text(child.read_text().replace(old, new))
    assert main(["check", str(child), "--variant", "tiny"]) == 2
    assert torch.is_grad_enabled()  # the failure inside the teacher's no-grad region left the mode as it was
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{child}:{line}: "), lines
    assert new.split(":")[0] in child.read_text().splitlines()[line - 1]
