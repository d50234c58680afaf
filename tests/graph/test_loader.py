"""The loader: locations, the !sg tag, extends, variants, --set overrides, and safety limits."""
from __future__ import annotations

import pytest

import composer
from composer.graph.loader import SG, load_located, parse_text
from composer.runtime.errors import GraphError


def test_locations_and_sg_tag():
    text = "blocks:\n  enc: {type: encoder.timm, arch: resnet18}\nflow:\n  k: !sg q\n  q: {enc: image}\n"
    located = parse_text(text, "g.yaml")
    assert located.data["flow"]["k"] == SG("q")
    assert str(located.loc("blocks", "enc", "arch")) == "g.yaml:2"
    assert str(located.loc("flow", "q")) == "g.yaml:5"
    assert str(located.loc("flow", "q", "enc", "missing")) == "g.yaml:5"  # nearest ancestor


def test_sg_on_mapping_keeps_the_mapping():
    located = parse_text("flow:\n  k: !sg {enc: x}\n", "g.yaml")
    assert located.data["flow"]["k"] == SG({"enc": "x"})


@pytest.mark.parametrize("text, message", [
    ("a: !!python/object/apply:os.system [ls]\n", "not allowed"),
    ("a: !!binary aGVsbG8=\n", "not allowed"),
    ("a: 1\na: 2\n", "duplicate key"),
    ("", "empty"),
    ("[1, 2]\n", "top level"),
])
def test_rejected_documents(text, message):
    with pytest.raises(GraphError, match=message):
        parse_text(text, "g.yaml")


def test_extends_variant_and_set(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("name: base\nblocks:\n  a: {type: ops.view, index: 0}\n  b: {type: ops.l2_normalize}\n"
                    "flow:\n  x: {a: image}\nvariants:\n  small: {blocks: {a: {index: 1}}}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\nblocks:\n  b: null\n  c: {type: ops.view}\n")
    located = load_located(child)
    assert located.data["name"] == "child"
    assert set(located.data["blocks"]) == {"a", "c"}  # null deletes, new keys are added
    assert str(located.loc("blocks", "c")).endswith("child.yaml:5")
    assert str(located.loc("blocks", "a")).endswith("base.yaml:3")  # inherited values keep their file
    assert load_located(child, variant="small").data["blocks"]["a"]["index"] == 1
    over = load_located(child, ["blocks.a.index=2", "blocks.c.index=[1, 2]", "train.lr={cosine: [0.1, 0]}"])
    assert over.data["blocks"]["a"]["index"] == 2
    assert over.data["blocks"]["c"]["index"] == [1, 2]
    assert over.data["train"]["lr"] == {"cosine": [0.1, 0]}
    assert str(over.loc("blocks", "a", "index")) == "<--set>"
    with pytest.raises(GraphError, match="did you mean 'small'"):
        load_located(child, variant="smal")


def test_extends_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nflow: {x: image}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nflow: {x: image}\n")
    with pytest.raises(GraphError, match="cycle"):
        load_located(tmp_path / "a.yaml")


def test_set_rejects_tags_and_bad_syntax(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("blocks: {a: {type: ops.view}}\nflow: {x: {a: image}}\n")
    with pytest.raises(GraphError, match="not allowed"):
        load_located(g, ["blocks.a.index=!!python/name:os.system"])
    with pytest.raises(GraphError, match="path=value"):
        load_located(g, ["blocks.a.index"])


def test_nested_calls_are_flattened_and_named():
    spec = composer.load("tests/graphs/tiny_moco.yaml")
    q = spec.nodes["q"]
    assert q.block == "normalize" and q.inputs["x"].src == "q__projector"
    assert spec.nodes["q__projector"].inputs["x"].src == "q__encoder"
    assert spec.nodes["loss"].inputs["positive"].sg and not spec.nodes["loss"].inputs["query"].sg
    assert spec.nodes["queue"].block == "queue" and spec.nodes["queue"].inputs == {}  # a block read as a value
    assert spec.updates["queue"]["keys"].src == "k"
