"""Contract tests over every registered block, the generated JSON Schema, and plugin registration."""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import yaml
from torch import nn

from composer.blocks import registry
from composer.cli import main
from composer.graph.loader import SG, read_file
from composer.graph.schema import graph_schema

KINDS = registry.all_blocks()


@pytest.mark.parametrize("kind", list(KINDS))
def test_block_declares_itself(kind):
    info = KINDS[kind]
    assert info.summary, f"{kind} needs a one-line summary"
    assert info.stage in ("data", "model")
    for p in info.params.values():
        assert p.doc, f"{kind}: parameter {p.name!r} is undocumented"


def test_signature_is_the_declaration():
    @registry.block("ops.test_double")
    class Double(nn.Module):
        """Doubles.

        Args:
            factor: the multiplier.
        """

        def __init__(self, *, factor: float = 2.0):
            super().__init__()
            self.factor = factor

        def forward(self, x, y=None):
            return x * self.factor

        def update(self, step, *, seen):
            pass

    try:
        info = registry.get("ops.test_double")
        assert list(info.params) == ["factor"] and info.params["factor"].doc == "the multiplier."
        assert info.inputs["x"].required and not info.inputs["y"].required
        assert list(info.update_inputs) == ["seen"]
        with pytest.raises(TypeError, match="keyword-only"):
            @registry.block("ops.test_positional")
            class Bad(nn.Module):
                def __init__(self, factor: float = 2.0):
                    super().__init__()
    finally:
        registry._REGISTRY.pop("ops.test_double", None)
    with pytest.raises(KeyError, match="did you mean 'ops.l2_normalize'"):
        registry.get("ops.l2_normalise")


def test_plugins_register_through_entry_points(monkeypatch, tmp_path):
    (tmp_path / "my_plugin.py").write_text(
        "from torch import nn\nfrom composer.blocks.registry import block\n\n"
        "@block('ops.plugin_identity')\nclass PluginIdentity(nn.Module):\n"
        "    '''Returns its input.'''\n    def forward(self, x):\n        return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint(name="mine", value="my_plugin", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points",
                        lambda group=None: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    try:
        assert "ops.plugin_identity" in registry.all_blocks()
    finally:
        registry._REGISTRY.pop("ops.plugin_identity", None)


def _plain(v):
    if isinstance(v, SG):
        return _plain(v.value)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def test_schema_is_valid_and_accepts_every_shipped_graph():
    schema = graph_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    graphs = sorted(Path("graphs").glob("*.yaml"))
    for path in graphs:
        data = _plain(read_file(path).data)
        if "extends" in data:
            continue  # a partial graph: only complete after merging
        errors = list(validator.iter_errors(data))
        assert not errors, (path, errors[0].message)
    bad = yaml.safe_load("blocks: {q: {type: memory.queue, size: many}}\nflow: {x: q}\n")
    assert list(validator.iter_errors(bad))


def test_cli_blocks_and_schema(capsys):
    assert main(["blocks"]) == 0
    text = capsys.readouterr().out
    for kind in KINDS:
        assert kind in text
    assert main(["blocks", "memory.queue"]) == 0
    assert "update(step, keys)" in capsys.readouterr().out
    assert main(["blocks", "memory.queeu"]) == 2
    assert "did you mean 'memory.queue'" in capsys.readouterr().err
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "pretext-composer graph"
