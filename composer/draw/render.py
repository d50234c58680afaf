"""Architecture diagrams drawn from the graph (graphviz), the way the MoCo, SimCLR and DINO papers draw methods.

Left to right from the inputs through the views and branches to the loss:

- a block with weights or state (encoder, head, EMA teacher, memory) is ONE node however often it is called,
  with an edge per call, so shared weights are visible and never duplicated; stateless glue (augmentations,
  maskers, ops, losses) is drawn once per call, as papers draw one ``aug`` per view;
- an EMA teacher is tied to its source by a dashed arrow labelled ``EMA``;
- every ``!sg`` edge is red, ends in a bar at its tail and is labelled ``sg``;
- memories (queue, centre) are cylinders (stores), fed by dotted update edges that run after the optimizer step;
- the data stage and the model stage are boxed regions; the model-stage region with no gradient is shaded;
- node labels give the block name, its kind and the parameters the graph sets; ``shapes`` (from
  ``composer.draw.measure.symbolic_shapes``) adds tensor shapes to the edges.

Nodes and edges carry a ``class`` attribute (``block``, ``store``, ``sg``, ``ema``, ``update`` ...) so SVG output
can be styled with CSS, and tests read the structure from the DOT source. The renderer never builds modules.
"""
from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

import graphviz

from composer.graph.compile import assign_stages, grad_nodes
from composer.graph.spec import Edge, GraphSpec

FORMATS = ("svg", "png", "pdf", "dot")
FILL = {"augment": "#fff2cc", "mask": "#fff2cc", "tokenizer": "#e1d5e7", "encoder": "#dae8fc",
        "head": "#d5e8d4", "teacher": "#e8eef7", "memory": "#ffe6cc", "loss": "#f8cecc", "ops": "#ffffff"}
GLUE_FAMILIES = ("augment", "mask", "ops", "loss")  # stateless unless they have an update(): drawn per call
SG_COLOR, EMA_COLOR, UPDATE_COLOR, NOGRAD_FILL = "#c0392b", "#2e6da4", "#b9770e", "#ececec"
MAX_PARAMS, MAX_VALUE = 4, 28  # label lengths: the parameters shown per block, characters per value
FONT = "Helvetica"


@dataclasses.dataclass
class DNode:
    id: str
    label: str           # graphviz HTML label, without the outer <>
    region: str          # "data", "grad" or "nograd"
    cls: str             # "input", "block", "call", "store", "teacher", "objective" (+ " embedding")
    attrs: dict[str, str]


@dataclasses.dataclass
class DEdge:
    tail: str
    head: str
    label: str           # plain text, lines joined by "\n"
    cls: str             # "flow", "update", "ema", "objective", with " sg" on stop-gradient edges
    attrs: dict[str, str]


@dataclasses.dataclass
class Drawing:
    name: str
    title: str
    nodes: dict[str, DNode]
    edges: list[DEdge]
    key: str | None = None  # the legend under the title (HTML); None: the standard one


# -- from the spec to a drawing ----------------------------------------------------------------------------------
def drawn_once(spec: GraphSpec, block: str) -> bool:
    """Blocks with weights or state are one node for all their calls; stateless glue is one node per call."""
    info = spec.blocks[block].info
    return info.stage == "model" and (info.family not in GLUE_FAMILIES or info.has_update)


def node_id(spec: GraphSpec, name: str) -> str:
    node = spec.nodes[name]
    if node.kind == "input":
        return f"input__{name}"
    if node.kind == "call" and drawn_once(spec, node.block):
        return f"block__{node.block}"
    return f"value__{name}"


def resolve(spec: GraphSpec, edge: Edge) -> Edge:
    """Follow aliases to the producing node; a stop-gradient anywhere on the way stops the whole edge."""
    sg, field, src = edge.sg, edge.field, edge.src
    seen = set()
    while spec.nodes[src].kind == "alias" and src not in seen:
        seen.add(src)
        inner = spec.nodes[src].inputs["value"]
        sg, field, src = sg or inner.sg, field or inner.field, inner.src
    return Edge(src, field, sg, edge.loc)


def drawing(spec: GraphSpec, shapes=None) -> Drawing:
    """The diagram of ``spec`` as nodes, edges and regions (``to_dot`` turns it into DOT)."""
    assign_stages(spec)
    needs = grad_nodes(spec)
    nodes: dict[str, DNode] = {}
    calls: dict[str, list[str]] = {}
    for name, node in spec.nodes.items():
        if node.kind == "call":
            calls.setdefault(node.block, []).append(name)

    def region(name: str) -> str:
        return "data" if spec.nodes[name].stage == "data" else ("grad" if name in needs else "nograd")

    for name, node in spec.nodes.items():
        nid = node_id(spec, name) if node.kind != "alias" else None
        if nid is None:
            continue
        if node.kind == "input":
            nodes[nid] = DNode(nid, f"<b>{_esc(name)}</b>", "data", "input",
                               {"shape": "oval", "fillcolor": "#f5f5f5", "tooltip": f"input {name}"})
        elif nid in nodes:  # another call of a block drawn once: it needs gradient if any call does
            if region(name) == "grad":
                nodes[nid].region = "grad"
        else:
            nodes[nid] = _block_node(spec, node.block, nid, region(name), len(calls[node.block]))
    for name, bs in spec.blocks.items():  # an EMA source that is never called still gets its node
        if drawn_once(spec, name) and f"block__{name}" not in nodes:
            nodes[f"block__{name}"] = _block_node(spec, name, f"block__{name}", "grad", 0)
    edges = _flow_edges(spec, shapes) + _update_edges(spec, shapes) + _ema_edges(spec)
    nodes["objective"] = DNode("objective", "<b>L</b>", "grad", "objective",
                               {"shape": "doublecircle", "fillcolor": "#ffffff", "width": "0.3",
                                "tooltip": "objective: " + " + ".join(
                                    (f"{w:g}·" if w != 1 else "") + n for n, w in spec.objective.items())})
    for name, weight in spec.objective.items():
        src = resolve(spec, Edge(name, None, False, None))
        edges.append(DEdge(node_id(spec, src.src), "objective", f"× {weight:g}" if weight != 1 else "",
                           "objective", {"penwidth": "1.5"}))
    return Drawing(spec.name, _title(spec), nodes, edges)


def _block_node(spec: GraphSpec, block: str, nid: str, region: str, n_calls: int) -> DNode:
    bs = spec.blocks[block]
    info = bs.info
    lines = [f"<b>{_esc(block)}</b>", f'<font point-size="9" color="#555555">{_esc(bs.kind)}</font>']
    if bs.source:
        lines.append(f'<font point-size="9">EMA of {_esc(bs.source)}</font>')
    shown = [(p, v) for p, v in bs.params.items() if p in info.params and v != bs.source][:MAX_PARAMS]
    lines += [f'<font point-size="9">{_esc(p)} = {_esc(format_value(v))}</font>' for p, v in shown]
    cls = "store" if info.family == "memory" else "teacher" if bs.source else "block"
    attrs = {"fillcolor": FILL.get(info.family, "#ffffff"), "tooltip": info.summary}
    if nid.startswith("block__"):
        if n_calls > 1:
            lines.append(f'<font point-size="9" color="{EMA_COLOR}">shared weights, {n_calls} calls</font>')
        if info.has_update and not info.update_inputs and info.family not in ("teacher", "memory"):
            lines.append('<font point-size="9">state updated after each step</font>')
    else:
        cls = "call"
    if info.family == "memory":
        attrs.update(shape="cylinder")
    elif info.family == "ops":
        attrs.update(shape="box", style="rounded,filled,dashed")
    elif bs.source:
        attrs.update(style="rounded,filled,dashed")
    if block == spec.embedding:
        attrs.update(peripheries="2")
        cls += " embedding"
    return DNode(nid, "<br/>".join(lines), region, f"{cls} {info.family}", attrs)


def _value_label(spec: GraphSpec, edge: Edge, resolved: Edge, shapes, port: str | None = None,
                 ports: int = 1) -> list[str]:
    """The user's name of the value on an edge, ``sg(...)`` around it on a stop-gradient edge, its port when
    the block has several, and its shape. Generated names of nested calls stay hidden, and so does a name
    the tail node already shows (an input, a memory read by its block's name)."""
    tail = spec.nodes[resolved.src]
    named = edge.src in spec.flow_names or edge.src in spec.blocks or edge.src in spec.inputs
    name = (edge.src + (f".{edge.field}" if edge.field else "")) if named else ""
    shown = tail.kind != "input" and not (tail.kind == "call" and tail.name == tail.block == edge.src)
    text = name if shown or edge.field else ""
    if resolved.sg:
        text = f"sg({name})" if name else "sg"
    if port is not None and ports > 1:
        text = f"{text} → {port}" if text else f"→ {port}"
    lines = [text] if text else []
    if shapes is not None and tail.kind != "input":
        lines.append(shapes.of(resolved.src, resolved.field, sep="×"))
    return lines


def _sg(edge: DEdge) -> DEdge:
    """Mark a stop-gradient edge: red, a bar at its tail (the label already says ``sg``)."""
    edge.cls += " sg"
    edge.attrs.update(color=SG_COLOR, fontcolor=SG_COLOR, dir="both", arrowtail="tee", penwidth="1.6")
    return edge


def _flow_edges(spec: GraphSpec, shapes) -> list[DEdge]:
    out = []
    for name, node in spec.nodes.items():
        if node.kind != "call":
            continue
        n_ports = len(spec.ports(node.block))
        for port, edge in node.inputs.items():
            src = resolve(spec, edge)
            e = DEdge(node_id(spec, src.src), node_id(spec, name),
                      "\n".join(_value_label(spec, edge, src, shapes, port, n_ports)), "flow", {})
            out.append(_sg(e) if src.sg else e)
    return out


def _update_edges(spec: GraphSpec, shapes) -> list[DEdge]:
    out = []
    for block, ports in spec.updates.items():
        for port, edge in ports.items():
            src = resolve(spec, edge)
            value = _value_label(spec, edge, src, shapes) or ["sg" if src.sg else "value"]
            e = DEdge(node_id(spec, src.src), f"block__{block}",
                      "\n".join([f"update {port} ← {value[0]}", *value[1:], "(after the step)"]), "update",
                      {"style": "dotted", "color": UPDATE_COLOR, "fontcolor": UPDATE_COLOR, "penwidth": "1.8",
                       "constraint": "false"})
            if src.sg:
                _sg(e)
                e.attrs.update(color=UPDATE_COLOR, style="dotted")  # an update is drawn as an update first
            out.append(e)
    return out


def _ema_edges(spec: GraphSpec) -> list[DEdge]:
    return [DEdge(f"block__{bs.source}", f"block__{name}", "EMA", "ema",
                  {"style": "dashed", "color": EMA_COLOR, "fontcolor": EMA_COLOR, "penwidth": "1.6",
                   "constraint": "false", "arrowhead": "empty"})
            for name, bs in spec.blocks.items() if bs.source and bs.source in spec.blocks]


def format_value(value) -> str:
    """A parameter value in a few characters: ``2048-2048-128``, ``cosine 0.996→1``, ``resnet50``."""
    if isinstance(value, dict) and len(value) >= 1:
        curve = next((k for k in ("cosine", "linear", "steps") if k in value), None)
        if curve and isinstance(value[curve], list) and len(value[curve]) == 2:
            a, b = value[curve]
            extra = "".join(f", {k} {v}" for k, v in value.items() if k != curve)
            text = f"{curve} {a:g}→{b:g}{extra}"
        else:
            text = json.dumps(value, separators=(",", ":"))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # views of augment.views
        text = " ".join("[" + ", ".join(f"{k} {format_value(v)}" for k, v in d.items()) + "]" for d in value)
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        text = "-".join(str(v) for v in value)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 1] + "…"


def _title(spec: GraphSpec) -> str:
    paper = spec.data.get("paper") or {}
    title = f"<b>{_esc(spec.name)}</b>"
    if isinstance(paper, dict) and paper.get("title"):
        title += f" · {_esc(paper['title'])}"
        if paper.get("arxiv"):
            title += f" (arXiv:{_esc(paper['arxiv'])})"
    return title


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


# -- from a drawing to DOT ---------------------------------------------------------------------------------------
REGIONS = {"data": "data stage (DataLoader workers)", "model": "model stage (device)",
           "nograd": "no gradient (run under no_grad)"}


def to_dot(d: Drawing, legend: bool = True) -> graphviz.Digraph:
    g = graphviz.Digraph(d.name, graph_attr={
        "rankdir": "LR", "fontname": FONT, "fontsize": "12", "nodesep": "0.3", "ranksep": "0.45",
        "labelloc": "t", "labeljust": "l", "newrank": "true", "label": f"<{_header(d.title, legend, d.key)}>"},
        node_attr={"fontname": FONT, "fontsize": "11", "shape": "box", "style": "rounded,filled",
                   "margin": "0.12,0.05"},
        edge_attr={"fontname": FONT, "fontsize": "9", "arrowsize": "0.7"})
    by_region = {r: [n for n in d.nodes.values() if n.region == r] for r in ("data", "grad", "nograd")}
    with g.subgraph(name="cluster_data") as c:
        c.attr(label=REGIONS["data"], style="rounded,dashed", color="#999999", fontcolor="#666666")
        for n in by_region["data"]:
            _node(c, n)
    with g.subgraph(name="cluster_model") as c:
        c.attr(label=REGIONS["model"], style="rounded,dashed", color="#999999", fontcolor="#666666")
        for n in by_region["grad"]:
            _node(c, n)
        if by_region["nograd"]:
            with c.subgraph(name="cluster_nograd") as ng:
                ng.attr(label=REGIONS["nograd"], style="rounded,filled", fillcolor=NOGRAD_FILL, color="#bbbbbb",
                        fontcolor="#666666")
                for n in by_region["nograd"]:
                    _node(ng, n)
    for e in d.edges:
        attrs = dict(e.attrs)
        attrs["class"] = e.cls
        if e.label:
            attrs["label"] = e.label
        g.edge(e.tail, e.head, **attrs)
    return g


def _node(g: graphviz.Digraph, n: DNode) -> None:
    g.node(n.id, label=f"<{n.label}>", **{"class": n.cls, **n.attrs})


def _header(title: str, legend: bool, key: str | None = None) -> str:
    if not legend:
        return title
    key = key or (f'<font color="{SG_COLOR}">⊣── sg: stop-gradient</font>   '
           f'<font color="{EMA_COLOR}">- - ▷ EMA: momentum copy</font>   '
           f'<font color="{UPDATE_COLOR}">······ update after the optimizer step</font>   '
           f'shaded: no gradient')
    return f'{title}<br align="left"/><font point-size="9">{key}</font><br align="left"/>'


# -- files -------------------------------------------------------------------------------------------------------
def render(spec: GraphSpec, path, fmt: str | None = None, shapes=None, legend: bool = True) -> Path:
    """Write the diagram of ``spec`` to ``path`` (format from ``fmt`` or the suffix: svg, png, pdf, dot)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "svg").lower()
    fmt = "dot" if fmt == "gv" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"cannot render to {fmt!r}; expected one of {', '.join(FORMATS)}")
    dot = to_dot(drawing(spec, shapes), legend=legend)
    write(dot, path, fmt)
    return path


def write(dot: graphviz.Digraph, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dot.source.encode() if fmt == "dot" else dot.pipe(format=fmt)
    path.write_bytes(data)
