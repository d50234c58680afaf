"""A plugin package installed for the test (a ``.dist-info`` with a ``pretext_composer.blocks`` entry point on
``sys.path``, as ``pip install`` leaves it): the graph that ``requires:`` it is checked, explained, built and
trained; without it, the graph fails with one line that says what to install."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import composer
from composer.blocks import registry
from composer.cli import main
from composer.runtime.errors import GraphError

HERE = Path(__file__).resolve().parent.parent / "plugin_example"
GRAPH = HERE / "vicreg_example.yaml"
KIND = "loss.vicreg_example"


def _forget_plugin():
    registry._REGISTRY.pop(KIND, None)
    sys.modules.pop("ptc_example_blocks", None)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The example package and its metadata in a fresh site directory on ``sys.path``."""
    site = tmp_path / "site"
    shutil.copytree(HERE / "ptc_example_blocks", site / "ptc_example_blocks")
    info = site / "ptc_example_blocks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ptc-example-blocks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pretext_composer.blocks]\nvicreg_example = ptc_example_blocks\n")
    monkeypatch.syspath_prepend(str(site))
    _forget_plugin()
    yield site
    _forget_plugin()


def test_missing_plugin_is_one_line_saying_what_to_install():
    _forget_plugin()
    with pytest.raises(GraphError) as info:
        composer.load(GRAPH)
    assert info.value.format() == (f"{GRAPH}:3: requires: the plugin package 'ptc-example-blocks' is not installed; "
                                   "expected pip install 'ptc-example-blocks' (then 'ptc blocks' lists its blocks)")


def test_a_too_old_plugin_is_one_line(installed):
    with pytest.raises(GraphError) as info:
        composer.load(GRAPH, {"requires": "[ptc-example-blocks>=0.2]"})
    assert "requires: 'ptc-example-blocks>=0.2', but ptc-example-blocks 0.1 is installed" in info.value.format()


def test_plugin_block_checks_and_explains(installed, capsys):
    assert main(["check", str(GRAPH)]) == 0
    assert capsys.readouterr().out.strip() == f"{GRAPH}: ok"            # no collapse warning: its own guard
    assert main(["explain", str(GRAPH)]) == 0
    out = capsys.readouterr().out
    assert "var = ½ mean_d relu(1 − √(Var A + ε)) + ½ mean_d relu(1 − √(Var B + ε)),   ε = 0.0001" in out
    assert "vicreg.std_ema ← m·std_ema + (1 − m)·mean_d std_d(gather(za))" in out


def test_plugin_loss_matches_the_vicreg_test_vector(installed):
    # facebookresearch/vicreg · main_vicreg.py · VICReg.forward on A, B (float64), one process: 45.254638
    registry.load_distribution("ptc-example-blocks")
    loss = registry.get(KIND).cls()
    a = torch.tensor([[1, 2, 0], [0, 1, -1], [2, -1, 1], [1, 1, 1]], dtype=torch.float64)
    b = torch.tensor([[1, 0, 1], [1, 2, 0], [-1, 0, 2], [0, 1, 1]], dtype=torch.float64)
    assert loss(a, b).item() == pytest.approx(45.254638, abs=1e-6)


def test_plugin_graph_builds_and_trains(installed, tmp_path):
    from composer.train import train
    from tests.train_helpers import fast, losses
    spec = composer.load(GRAPH)
    run = train(spec, fast(tmp_path / "run", data="shapes:n=16,size=16"))
    steps = losses(run)
    assert [s for s, _ in steps] == [1, 2] and all(torch.isfinite(torch.tensor(v)) for _, v in steps)
    from tests.train_helpers import final_model
    state = final_model(run)
    # two updates from 0 with m = 0.9: std_ema = 0.1·s1·0.9 + 0.1·s2 > 0; a collapsed batch would give 0
    assert 0 < float(state["vicreg.std_ema"]) < 1.0
