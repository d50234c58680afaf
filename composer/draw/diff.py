"""One diagram of two graphs that highlights what differs (``ptc diff A B``), e.g. MoCo v2 against MoCo v3.

Blocks are paired first by name, then by role: a teacher with a teacher of the same (paired) source, then the
one remaining block of a family on each side (``info_nce`` ↔ ``contrastive``: the loss). Values are paired by
name. The drawing is B's, with A's unpaired nodes and edges added back: green for what only B has, dashed purple
for what only A has, orange for a block whose kind or parameters changed (the label lists the changes). Node
and edge ``class`` attributes carry ``added``, ``removed`` or ``changed`` for tests and CSS.
"""
from __future__ import annotations

import copy
import html

from composer.draw.render import DEdge, DNode, Drawing, drawing, format_value
from composer.graph.spec import GraphSpec

ADDED, REMOVED, CHANGED = "#1e8449", "#8e44ad", "#d68910"


def match_blocks(a: GraphSpec, b: GraphSpec) -> dict[str, str]:
    """A's block names → B's block names they correspond to."""
    pairs = {n: n for n in a.blocks if n in b.blocks}

    def free_b():
        return [n for n in b.blocks if n not in pairs.values()]

    changed = True
    while changed:  # teachers follow their sources, which may themselves pair up in an earlier round
        changed = False
        for name, bs in a.blocks.items():
            if name in pairs or not bs.source or bs.source not in pairs:
                continue
            same = [n for n in free_b() if b.blocks[n].source == pairs[bs.source]
                    and b.blocks[n].info.family == bs.info.family]
            if len(same) == 1:
                pairs[name], changed = same[0], True
    for name, bs in a.blocks.items():
        if name in pairs or bs.source:
            continue
        fam = bs.info.family
        mine = [n for n in a.blocks if n not in pairs and a.blocks[n].info.family == fam and not a.blocks[n].source]
        theirs = [n for n in free_b() if b.blocks[n].info.family == fam and not b.blocks[n].source]
        if len(mine) == 1 and len(theirs) == 1:
            pairs[name] = theirs[0]
    return pairs


def diff(a: GraphSpec, b: GraphSpec, shapes_a=None, shapes_b=None) -> tuple[Drawing, list[str]]:
    """The highlighted union drawing and a list of the differences, one line each."""
    da, db = drawing(a, shapes_a), drawing(b, shapes_b)
    pairs = match_blocks(a, b)

    def remap(nid: str) -> str:  # A's node id in B's drawing (values and inputs pair by name)
        return "block__" + pairs[nid[7:]] if nid.startswith("block__") and nid[7:] in pairs else nid

    a_of = {remap(nid): nid for nid in da.nodes}
    notes: list[str] = []
    nodes: dict[str, DNode] = {}
    for nid, node in db.nodes.items():
        node = copy.deepcopy(node)
        if nid not in a_of:
            _mark(node, "added", ADDED, ["+ only in " + b.name])
            notes.append(f"+ {_describe(b, nid)}")
        else:
            changes = _changes(a, b, a_of[nid], nid, pairs)
            if changes:
                _mark(node, "changed", CHANGED, changes)
                notes.append(f"~ {_describe(b, nid)}: " + "; ".join(changes))
        nodes[nid] = node
    for nid, node in da.nodes.items():
        rid = remap(nid)
        if rid not in nodes:
            node = copy.deepcopy(node)
            node.id = rid
            _mark(node, "removed", REMOVED, ["− only in " + a.name])
            node.attrs["style"] = node.attrs.get("style", "rounded,filled") + ",dashed"
            nodes[rid] = node
            notes.append(f"− {_describe(a, nid)}")
    edges = [copy.deepcopy(e) for e in db.edges]
    b_keys = {_key(e) for e in db.edges}
    a_keys = set()
    for e in da.edges:
        e = copy.deepcopy(e)
        e.tail, e.head = remap(e.tail), remap(e.head)
        a_keys.add(_key(e))
        if _key(e) not in b_keys:
            _mark_edge(e, "removed", REMOVED, "−")
            e.attrs["style"] = "dashed"
            edges.append(e)
            notes.append(f"− edge {_edge_text(e)}")
    for e in edges:
        if "removed" not in e.cls.split() and _key(e) not in a_keys:
            _mark_edge(e, "added", ADDED, "+")
            notes.append(f"+ edge {_edge_text(e)}")
    title = f"<b>diff</b>: {_esc(a.name)} (A) → {_esc(b.name)} (B)"
    key = (f'<font color="{ADDED}">green: only in B</font>   <font color="{REMOVED}">dashed purple: only in A</font>'
           f'   <font color="{CHANGED}">orange: changed</font>   (sg edges, EMA arrows and updates as in ptc render)')
    return Drawing(f"diff_{a.name}_{b.name}", title, nodes, edges, key), notes


def _key(e: DEdge) -> tuple:
    return e.tail, e.head, e.cls.split()[0], "sg" in e.cls.split(), e.label


def _mark(node: DNode, status: str, color: str, lines: list[str]) -> None:
    node.cls += f" {status}"
    node.attrs.update(color=color, penwidth="3")
    node.label += "".join(f'<br/><font point-size="9" color="{color}">{_esc(t)}</font>' for t in lines)


def _mark_edge(e: DEdge, status: str, color: str, sign: str) -> None:
    e.cls += f" {status}"
    e.attrs.update(color=color, fontcolor=color, penwidth="2.5")
    e.label = f"{sign} {e.label}" if e.label else sign


def _edge_text(e: DEdge) -> str:
    label = e.label.replace("\n", " ").lstrip("+− ")
    return f"{_plain(e.tail)} → {_plain(e.head)}" + (f" ({label})" if label else "")


def _plain(nid: str) -> str:
    return nid.split("__", 1)[-1]


def _signature(spec: GraphSpec, nid: str) -> tuple[str, str, dict] | None:
    """(name, kind, params) of the block behind a node id; None for inputs and the objective."""
    if nid.startswith("block__"):
        name = nid[7:]
    elif nid.startswith("value__") and nid[7:] in spec.nodes and spec.nodes[nid[7:]].kind == "call":
        name = spec.nodes[nid[7:]].block
    else:
        return None
    bs = spec.blocks[name]
    return name, bs.kind, dict(bs.params)


def _changes(a: GraphSpec, b: GraphSpec, a_id: str, b_id: str, pairs: dict[str, str]) -> list[str]:
    sa, sb = _signature(a, a_id), _signature(b, b_id)
    if a_id == "objective":
        return [] if a.objective == b.objective else [f"objective {a.objective} → {b.objective}"]
    if sa is None or sb is None:
        return []
    out = []
    if sa[0] != sb[0]:
        out.append(f"was {sa[0]}")
    if sa[1] != sb[1]:
        out.append(f"kind {sa[1]} → {sb[1]}")
    pa, pb = sa[2], sb[2]
    if a.blocks[sa[0]].source:
        pa = {k: (pairs.get(v, v) if v == a.blocks[sa[0]].source else v) for k, v in pa.items()}
    for p in list(dict.fromkeys([*pa, *pb])):
        if p not in pb:
            out.append(f"{p} {format_value(pa[p])} removed")
        elif p not in pa:
            out.append(f"{p} = {format_value(pb[p])} added")
        elif pa[p] != pb[p]:
            out.append(f"{p} {format_value(pa[p])} → {format_value(pb[p])}")
    return out


def _describe(spec: GraphSpec, nid: str) -> str:
    sig = _signature(spec, nid)
    if sig is None:
        return _plain(nid)
    return f"{_plain(nid)} ({sig[1]})"


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)
