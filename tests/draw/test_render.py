"""Diagrams: the structure of the drawing, read back from the DOT source by graphviz itself (``dot -Tjson0``).

Checked against the graph spec: one node per block with weights however often it is called, an ``EMA`` dashed
arrow from each teacher's source, every ``!sg`` edge marked, memories drawn as stores with their update edges,
the data / model / no-gradient regions; and every shipped graph renders to SVG and PNG.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import composer
from composer.cli import main
from composer.draw.render import SG_COLOR, drawing, render, resolve, to_dot
from composer.graph.compile import assign_stages

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "graphs"
SHIPPED = sorted((ROOT / "graphs").glob("*.yaml"))


def layout(spec, shapes=None) -> dict:
    """Nodes (name → attributes), edges (tail, head, attributes) and clusters (name → node names, nested
    clusters included), as graphviz reads the DOT source we generate."""
    source = to_dot(drawing(spec, shapes)).source
    out = subprocess.run(["dot", "-Tjson0"], input=source.encode(), capture_output=True, check=True).stdout
    g = json.loads(out)
    objects = g["objects"]
    by_id = {o["_gvid"]: o for o in objects}
    nodes = {o["name"]: o for o in objects if "nodes" not in o and not o["name"].startswith("cluster")}

    def members(o) -> set[str]:
        names = {by_id[i]["name"] for i in o.get("nodes", []) if "nodes" not in by_id[i]}
        for sub in o.get("subgraphs", []):
            names |= members(by_id[sub])
        return names

    clusters = {o["name"]: members(o) for o in objects if o["name"].startswith("cluster")}
    edges = [(by_id[e["tail"]]["name"], by_id[e["head"]]["name"], e) for e in g.get("edges", [])]
    return {"nodes": nodes, "edges": edges, "clusters": clusters}


def classes(attrs: dict) -> set[str]:
    return set(attrs.get("class", "").split())


def load(name: str, **kw):
    return composer.load(TESTS / name, **kw)


def test_shared_blocks_are_drawn_once_with_an_edge_per_call():
    g = layout(load("render_siamese.yaml"))
    names = set(g["nodes"])
    assert {"block__encoder", "block__projector", "block__predictor"} <= names
    assert not names & {"value__z1", "value__z2", "value__z1__encoder", "value__z2__encoder", "value__p1"}
    into = lambda n: [t for t, h, _ in g["edges"] if h == n]  # noqa: E731
    # the encoder is called on both views: two edges from the two (stateless, drawn per call) view ops
    assert sorted(into("block__encoder")) == ["value__z1__first", "value__z2__second"]
    assert into("block__projector") == ["block__encoder", "block__encoder"]
    assert "shared weights, 2 calls" in g["nodes"]["block__encoder"]["label"]
    assert "shared weights" not in g["nodes"]["block__predictor"]["label"]  # called once


def test_dino_like_graph_teacher_center_and_regions():
    spec = load("render_dino.yaml")
    g = layout(spec)
    nodes, edges = g["nodes"], g["edges"]
    for block in ("encoder", "head", "teacher_enc", "teacher_head", "center"):
        assert sum(n == f"block__{block}" for n in nodes) == 1
    ema = [(t, h, a) for t, h, a in edges if "ema" in classes(a)]
    assert sorted((t, h) for t, h, _ in ema) == [("block__encoder", "block__teacher_enc"),
                                                ("block__head", "block__teacher_head")]
    for _, _, a in ema:
        assert a["label"] == "EMA" and a["style"] == "dashed"
    assert nodes["block__center"]["shape"] == "cylinder" and "store" in classes(nodes["block__center"])
    updates = [(t, h, a) for t, h, a in edges if "update" in classes(a)]
    assert [(t, h) for t, h, _ in updates] == [("block__teacher_head", "block__center")]
    assert updates[0][2]["style"] == "dotted" and updates[0][2]["label"].startswith("update teacher ← sg(t)")
    into_loss = {a.get("label", ""): a for t, h, a in edges if h == "block__dino"}
    assert into_loss["sg(t) → teacher"]["arrowtail"] == "tee"
    assert into_loss["sg(center) → center"]["color"] == SG_COLOR
    assert "sg" not in classes(into_loss["s_local → student_local"])
    clusters = g["clusters"]
    assert clusters["cluster_data"] == {"input__image", "value__crops"}
    assert clusters["cluster_nograd"] == {"block__teacher_enc", "block__teacher_head", "block__center"}
    assert {"block__encoder", "block__head", "block__dino", "objective"} <= clusters["cluster_model"]
    assert clusters["cluster_nograd"] < clusters["cluster_model"]


@pytest.mark.parametrize("path", [TESTS / "render_dino.yaml", TESTS / "render_siamese.yaml",
                                  ROOT / "graphs" / "moco_v2.yaml", TESTS / "tiny_shared.yaml"],
                         ids=lambda p: p.stem)
def test_every_stop_gradient_edge_is_marked(path):
    spec = composer.load(path)
    assign_stages(spec)
    flow_sg = sum(resolve(spec, e).sg for n in spec.nodes.values() if n.kind == "call" for e in n.inputs.values())
    update_sg = sum(e.sg for ports in spec.updates.values() for e in ports.values())
    g = layout(spec)
    marked = [a for _, _, a in g["edges"] if "sg" in classes(a)]
    assert len(marked) == flow_sg + update_sg > 0
    for a in marked:
        assert a["arrowtail"] == "tee" and a["dir"] == "both" and "sg" in a["label"]
    unmarked = [a for _, _, a in g["edges"] if "sg" not in classes(a)]
    assert not any("sg" in a.get("label", "").split("(")[0] for a in unmarked)


def test_moco_v2_queue_teachers_and_two_augmentations():
    g = layout(composer.load(ROOT / "graphs" / "moco_v2.yaml"))
    nodes, edges = g["nodes"], g["edges"]
    # the augmentation has no weights: one node per call (x_q, x_k), as the paper draws one aug per view
    assert {"value__x_q", "value__x_k"} <= set(nodes) and "block__aug" not in nodes
    assert nodes["block__queue"]["shape"] == "cylinder"
    assert [(t, h) for t, h, a in edges if "update" in classes(a)] == [("value__k", "block__queue")]
    assert sorted((t, h) for t, h, a in edges if "ema" in classes(a)) == [
        ("block__encoder", "block__key_encoder"), ("block__projector", "block__key_projector")]
    labels = {a.get("label") for t, h, a in edges if h == "value__loss"}
    assert labels == {"q → query", "sg(k) → positive", "sg(queue) → negatives"}
    assert g["clusters"]["cluster_nograd"] >= {"block__key_encoder", "block__key_projector", "block__queue"}
    assert "block__encoder" not in g["clusters"]["cluster_nograd"]
    assert nodes["block__encoder"]["peripheries"] == "2"  # the embedding block


def test_shapes_label_the_edges():
    from composer.draw.measure import symbolic_shapes
    spec = load("render_dino.yaml")
    g = layout(spec, symbolic_shapes(spec))
    labels = {(t, h): a.get("label", "") for t, h, a in g["edges"] if "flow" in classes(a)}
    assert labels[("block__teacher_head", "block__dino")] == "sg(t) → teacher\n2×N×K"
    assert labels[("value__crops", "block__encoder")] in ("crops.global_crops\n2×N×3×G×G",
                                                          "crops.local_crops\nV×N×3×L×L")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_graph_renders_to_svg_and_png(path, tmp_path):
    spec = composer.load(path)
    svg = render(spec, tmp_path / f"{path.stem}.svg")
    png = render(spec, tmp_path / f"{path.stem}.png")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_render_formats_and_errors(tmp_path, capsys):
    graph = str(TESTS / "render_siamese.yaml")
    assert main(["render", graph, "-o", str(tmp_path / "g.dot")]) == 0
    assert (tmp_path / "g.dot").read_text().startswith("digraph render_siamese")
    assert main(["render", graph, "-o", str(tmp_path / "g.pdf")]) == 0
    assert (tmp_path / "g.pdf").read_bytes()[:4] == b"%PDF"
    assert main(["render", graph, "-o", str(tmp_path / "g.jpeg2")]) == 2
    assert "cannot render to 'jpeg2'" in capsys.readouterr().err
    assert main(["render", graph, "-o", str(tmp_path / "p.dot"), "--set", "blocks.predictor.dims=[24,24]"]) == 0
    assert "24-24" in (tmp_path / "p.dot").read_text()


def test_diff_highlights_only_what_changed(tmp_path):
    from composer.draw.diff import diff
    a = load("render_dino.yaml")
    b = load("render_dino.yaml", overrides=["blocks.center.momentum=0.8"])
    d, notes = diff(a, b)
    assert notes == ["~ center (memory.center): momentum 0.9 → 0.8"]
    changed = [n for n in d.nodes.values() if "changed" in n.cls.split()]
    assert [n.id for n in changed] == ["block__center"]
    assert not any({"added", "removed"} & set(e.cls.split()) for e in d.edges)
    assert main(["diff", str(TESTS / "render_dino.yaml"), str(TESTS / "render_siamese.yaml"),
                 "-o", str(tmp_path / "d.svg")]) == 0


@pytest.mark.skipif(not (ROOT / "graphs" / "moco_v3.yaml").exists(), reason="needs the shipped MoCo v3 graph")
def test_diff_moco_v2_to_v3_pairs_the_momentum_encoders():
    from composer.draw.diff import diff
    v2, v3 = (composer.load(ROOT / "graphs" / f"moco_{v}.yaml") for v in ("v2", "v3"))
    d, notes = diff(v2, v3)
    status = {nid: set(n.cls.split()) for nid, n in d.nodes.items()}
    assert "removed" in status["block__queue"]  # v3 drops the queue for in-batch keys
    assert "added" in status["block__predictor"]  # and adds a predictor
    momentum = next(nid for nid in status if nid != "block__encoder" and "teacher" in status[nid]
                    and "encoder" in nid)
    assert "changed" in status[momentum] and "was key_encoder" in d.nodes[momentum].label
    assert "block__key_encoder" not in d.nodes
