"""Compile a checked ``GraphSpec`` into two ``torch.fx`` GraphModules, built node by node (no tracing).

- the *data stage* (augment, maskers, text tokenizer) runs in DataLoader workers on the collated raw batch;
- the *model stage* runs on the device and returns ``{"loss", "values", "updates"}``.

Each block becomes one submodule; a block used twice is called twice (shared weights). A ``!sg`` edge becomes
``x.detach()``. Nodes that have no gradient path to the objective (the teacher branch, memory reads) are
ordered first and run with grad disabled, so ``gm.code`` reads like the hand-written method::

    def forward(self, batch):
        x_q = batch['x_q'];  x_k = batch['x_k']
        grad_enabled = torch.is_grad_enabled();  torch._C._set_grad_enabled(False)
        k__key_encoder = self.key_encoder(x_k);  k = self.key_projector(k__key_encoder)
        queue = self.queue()
        torch._C._set_grad_enabled(grad_enabled)
        q__encoder = self.encoder(x_q);  q = self.projector(q__encoder)
        ...
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import re

import networkx as nx
import torch
from torch import fx, nn

from composer.blocks import registry
from composer.graph.spec import Edge, GraphSpec, Node
from composer.runtime.errors import GraphError, GraphErrors
from composer.runtime.schedules import Schedule


def dependency_graph(spec: GraphSpec) -> nx.DiGraph:
    """Nodes of the spec; an edge ``src → dst`` (attribute ``sg``) for every input edge, plus update edges."""
    g = nx.DiGraph()
    for name, node in spec.nodes.items():
        g.add_node(name)
        for port, edge in node.inputs.items():
            if edge.src in spec.nodes:
                prev = g.get_edge_data(edge.src, name)
                sg = edge.sg and (prev is None or prev["sg"])  # any non-sg edge carries gradient
                g.add_edge(edge.src, name, sg=sg, port=port)
    return g


def assign_stages(spec: GraphSpec) -> None:
    """``node.stage``: inputs and data blocks are ``data``; aliases follow their source; the rest ``model``."""
    g = dependency_graph(spec)
    for name in nx.topological_sort(g):
        node = spec.nodes[name]
        if node.kind == "input":
            node.stage = "data"
        elif node.kind == "call":
            node.stage = spec.blocks[node.block].info.stage if node.block in spec.blocks else "model"
        else:
            node.stage = spec.nodes[node.inputs["value"].src].stage


def grad_nodes(spec: GraphSpec) -> set[str]:
    """Model-stage nodes with a path to an objective value that crosses no ``!sg`` edge."""
    g = dependency_graph(spec)
    reach: set[str] = set()
    stack = [n for n in spec.objective if n in g]
    while stack:
        n = stack.pop()
        if n in reach:
            continue
        reach.add(n)
        stack.extend(p for p in g.predecessors(n) if not g.edges[p, n]["sg"])
    return {n for n in reach if spec.nodes[n].stage == "model"}


def execution_order(spec: GraphSpec, nodes: list[str]) -> list[str]:
    """Topological order that puts gradient-free nodes first (one no-grad region) and otherwise keeps file order."""
    g = dependency_graph(spec).subgraph(nodes)
    needs = grad_nodes(spec)
    position = {n: i for i, n in enumerate(spec.nodes)}
    return list(nx.lexicographical_topological_sort(g, key=lambda n: (n in needs, position[n])))


def build_blocks(spec: GraphSpec, device: str | torch.device | None = None) -> dict[str, nn.Module]:
    """Instantiate every block, sources before the wrappers that copy them.

    Model-stage blocks are built on ``device``; data-stage blocks always on the CPU, because they run in
    DataLoader workers (a CUDA tensor held by a transform would crash forked workers).
    """
    built: dict[str, nn.Module] = {}
    pending = sorted(spec.blocks, key=lambda b: spec.blocks[b].source is not None)  # wrappers last
    while pending:
        ready = [n for n in pending if spec.blocks[n].source is None or spec.blocks[n].source in built]
        if not ready:
            raise GraphErrors([GraphError("blocks copy each other in a cycle: " + ", ".join(pending),
                                          spec.blocks[pending[0]].loc, node=pending[0])])
        for name in ready:
            bs = spec.blocks[name]
            where = "cpu" if bs.info.stage == "data" else device
            try:
                with torch.device(where) if where is not None else contextlib.nullcontext():
                    kwargs = block_kwargs(bs, built)
                    built[name] = bs.info.cls(**kwargs)
                # a plain attribute (not a submodule): teacher.ema's init: independent builds the block again
                object.__setattr__(built[name], registry.REBUILD_ATTRIBUTE,
                                   functools.partial(bs.info.cls, **kwargs))
            except GraphErrors:
                raise
            except Exception as e:  # a block's own parameter check, or a library's (timm) failure on its values
                what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                named = [p for p in bs.params if re.search(rf"\b{re.escape(p)}\b", what)]  # point at its line
                loc = spec.loc("blocks", name, named[0]) if named else bs.loc
                if getattr(e, "path", None):  # a block naming the exact key (augment.views: views[1].blur)
                    loc = spec.loc("blocks", name, *e.path)
                raise GraphErrors([GraphError(f"cannot build {bs.kind}: {what}", loc, node=name,
                                              expected="parameters the block accepts (see 'ptc blocks')")]) from e
            pending.remove(name)
    return built


def block_kwargs(bs, built: dict[str, nn.Module]) -> dict:
    """Parameter values as the block's ``__init__`` expects them (block refs → modules, schedules parsed)."""
    kwargs = {}
    for name, value in bs.params.items():
        ann = bs.info.params[name].annotation
        if ann is registry.BlockRef:
            value = built[value]
        elif ann is Schedule:
            value = Schedule.parse(value)
        elif isinstance(value, list) and _is_tuple(ann):
            value = tuple(value)
        kwargs[name] = value
    return kwargs


def _is_tuple(ann) -> bool:
    import typing
    return ann is tuple or typing.get_origin(ann) is tuple or any(
        typing.get_origin(a) is tuple for a in typing.get_args(ann))


def build_stage(spec: GraphSpec, modules: dict[str, nn.Module], stage: str) -> tuple[fx.GraphModule, list[str]]:
    """The fx GraphModule of one stage and the names of the batch keys it reads."""
    graph = fx.Graph()
    batch = graph.placeholder("batch")
    env: dict[str, fx.Node] = {}
    cached: dict[tuple, fx.Node] = {}  # one getattr / detach node per (source, field, sg)
    stage_nodes = [n for n in spec.nodes if spec.nodes[n].stage == stage]
    needs = grad_nodes(spec) if stage == "model" else set(stage_nodes)
    reads: list[str] = []

    def value(edge: Edge, name: str | None = None) -> fx.Node:
        """The fx node carrying ``edge``'s value (named ``name`` when an alias needs a node of its own)."""
        key = (edge.src, edge.field, edge.sg)
        if name is None and key in cached:
            return cached[key]
        src = env_or_read(edge.src)
        if edge.field is not None:
            src = graph.create_node("call_function", getattr, (src, edge.field),
                                    name=name if not edge.sg else f"{edge.src}_{edge.field}")
        if edge.sg:
            src = graph.create_node("call_method", "detach", (src,), name=name or f"{edge.src}_sg")
        cached.setdefault(key, src)
        return src

    def env_or_read(name: str) -> fx.Node:
        if name not in env:  # produced by the other stage (or a raw input): read it from the batch
            env[name] = graph.create_node("call_function", operator.getitem, (batch, name), name=name)
            reads.append(name)
        return env[name]

    order = execution_order(spec, stage_nodes)
    free = [n for n in order if n not in needs and spec.nodes[n].kind != "input"]
    grad_flag = None
    if free:
        for n in order:  # read the batch first so the no-grad region holds only computation
            for edge in spec.nodes[n].inputs.values():
                if spec.nodes.get(edge.src) is not None and spec.nodes[edge.src].stage != stage:
                    env_or_read(edge.src)
        grad_flag = graph.create_node("call_function", torch.is_grad_enabled, (), name="grad_enabled")
    grad_on = True
    for name in order:
        node: Node = spec.nodes[name]
        if node.kind == "input":
            env_or_read(name)
            continue
        want = name in needs
        if grad_flag is not None and want != grad_on:
            graph.call_function(torch._C._set_grad_enabled, (grad_flag if want else False,))
            grad_on = want
        if node.kind == "alias":
            env[name] = value(node.inputs["value"], name)
            continue
        kwargs = {port: value(edge) for port, edge in node.inputs.items()}
        env[name] = graph.create_node("call_module", node.block, (), kwargs, name=name)
    if grad_flag is not None and not grad_on:
        graph.call_function(torch._C._set_grad_enabled, (grad_flag,))

    if stage == "model":
        result = {"loss": _objective(graph, spec, env),
                  "values": {n: env[n] for n in spec.nodes if n in env and spec.nodes[n].kind != "input"},
                  "updates": {b: {p: value(dataclasses.replace(e, sg=True)) for p, e in ports.items()}
                              for b, ports in spec.updates.items()}}
    else:
        result = {n: env[n] for n in stage_nodes if n in env}
    graph.output(result)
    used = {n.target for n in graph.nodes if n.op == "call_module"}
    gm = fx.GraphModule({b: modules[b] for b in used}, graph, class_name=f"{_camel(spec.name)}{stage.title()}Stage")
    return gm, reads


def _objective(graph: fx.Graph, spec: GraphSpec, env) -> fx.Node:
    items = list(spec.objective.items())
    if len(items) == 1 and items[0][1] == 1.0:
        return env[items[0][0]]
    total = None
    for name, weight in items:
        term = env[name] if weight == 1.0 else graph.call_function(operator.mul, (env[name], weight))
        total = term if total is None else graph.call_function(operator.add, (total, term))
    return total


def _camel(name: str) -> str:
    return "".join(part.title() for part in str(name).replace("-", "_").split("_")) or "Graph"
