"""Static checks of a parsed graph, all before any weight is allocated (``ptc check``).

In order: parameter types (JSON Schema); cycles; values and blocks never used; a teacher or memory output that
reaches a loss without ``!sg``; a data-stage block fed by a model-stage value; then the dry run on the meta device
(shape mismatches); trainable parameters that never reach the objective. Each problem is one ``GraphError``;
all found are raised together as ``GraphErrors``. Warnings (collapse guards) are returned in the ``Report``.
"""
from __future__ import annotations

import dataclasses
import inspect

import networkx as nx

from composer.blocks import registry
from composer.graph.compile import assign_stages, dependency_graph, grad_nodes
from composer.graph.spec import GraphSpec
from composer.runtime.errors import GraphError, GraphErrors

STATEFUL_FAMILIES = ("teacher", "memory")


@dataclasses.dataclass
class Report:
    spec: GraphSpec
    warnings: list[str]
    values: dict[str, object]  # every node's dry-run value (meta tensors in the model stage)


def check(spec: GraphSpec, dry_run: bool = True) -> Report:
    from composer.graph.ranges import value_errors
    errors = _structure(spec) + _train_section(spec) + value_errors(spec)
    if errors:
        raise GraphErrors(errors)
    assign_stages(spec)
    errors += _stop_gradients(spec) + _stages(spec) + _text_vocab(spec)
    if errors:
        raise GraphErrors(errors)
    values = {}
    if dry_run:
        from composer.graph.budget import bounded_dry_run
        values = bounded_dry_run(spec)
        errors += _trainable_reach(spec)
        if errors:
            raise GraphErrors(errors)
    from composer.graph.flat_loss import flat_loss_warnings
    return Report(spec, _collapse_warnings(spec) + flat_loss_warnings(spec), values)


def _structure(spec: GraphSpec) -> list[GraphError]:
    errors = []
    g = dependency_graph(spec)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [u for u, _ in cycle] + [cycle[0][0]]
        first = names[0]
        errors.append(GraphError("the flow has a cycle: " + " -> ".join(names), spec.nodes[first].loc, node=first,
                                 expected="a directed acyclic graph (state feeds back only through 'updates')"))
        return errors
    consumed = {e.src for n in spec.nodes.values() for e in n.inputs.values()}
    consumed |= {e.src for ports in spec.updates.values() for e in ports.values()}
    consumed |= set(spec.objective)
    for name in spec.flow_names:
        if name in spec.nodes and name not in consumed:
            errors.append(GraphError(f"the value {name!r} is computed but never used", spec.nodes[name].loc, node=name,
                                     expected="every value to feed a block, an update or the objective"))
    called = {n.block for n in spec.nodes.values() if n.kind == "call"}
    sources = {b.source for b in spec.blocks.values() if b.source}
    for name, block in spec.blocks.items():
        if name not in called and name not in sources and name != spec.embedding:
            errors.append(GraphError(f"the block {name!r} is never used", block.loc, node=name,
                                     expected="each block to be called in 'flow' (or remove it)"))
    errors += _fields(spec)
    for name in spec.objective:
        node = spec.nodes[name]
        if node.kind == "call" and spec.blocks[node.block].info.family != "loss" and not _from_loss(spec, name):
            errors.append(GraphError(f"the objective {name!r} is not computed by a loss block", node.loc, node=name,
                                     expected="a value produced by a loss.* block"))
    return errors


def _outputs_of(spec: GraphSpec, name: str) -> tuple[str, ...] | None:
    """The named outputs of value ``name`` (None: one unnamed tensor, or an input from the data)."""
    node = spec.nodes[name]
    if node.kind == "call":
        return spec.outputs(node.block)
    if node.kind == "alias" and node.inputs["value"].field is None:
        return _outputs_of(spec, node.inputs["value"].src)
    return None


def _fields(spec: GraphSpec) -> list[GraphError]:
    """``masks.context`` must name an output of the block that computes ``masks``."""
    errors = []
    edges = [(n.name, e) for n in spec.nodes.values() for e in n.inputs.values()]
    edges += [(block, e) for block, ports in spec.updates.items() for e in ports.values()]
    for owner, edge in edges:
        if edge.field is None or edge.src not in spec.nodes:
            continue
        outputs = _outputs_of(spec, edge.src)
        if outputs is None:
            errors.append(GraphError(f"'{edge.src}.{edge.field}': {edge.src!r} is one tensor without named outputs",
                                     edge.loc, node=owner, expected=f"'{edge.src}' alone"))
        elif edge.field not in outputs:
            errors.append(GraphError(f"'{edge.src}.{edge.field}': {edge.src!r} has no output {edge.field!r}"
                                     f"{registry.did_you_mean(edge.field, outputs)}", edge.loc, node=owner,
                                     expected="one of " + ", ".join(outputs)))
    return errors


def _train_section(spec: GraphSpec) -> list[GraphError]:
    """The ``train:`` mapping (optimizer, schedules, weight-decay rules) is checked with the rest of the graph."""
    from composer.graph.train_section import parse_train
    try:
        parse_train(spec)
    except GraphErrors as e:
        return list(e.errors)
    except GraphError as e:
        return [e]
    return []


def _param(bs, name: str):
    """A block's parameter as written, else its declared default (None when it has neither)."""
    if name in bs.params:
        return bs.params[name]
    param = bs.info.params.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _text_vocab(spec: GraphSpec) -> list[GraphError]:
    """A text encoder's ``ids`` from a tokenizer: the embedding table has the tokenizer's vocabulary size, the
    positions cover its context length, and ``pool: argmax`` needs the end token to be the largest id (CLIP
    pools at ``ids.argmax(-1)``, openai/CLIP · clip/model.py · encode_text)."""
    errors = []
    for node in spec.nodes.values():
        if node.kind != "call" or "ids" not in node.inputs:
            continue
        encoder = spec.blocks[node.block]
        src = spec.nodes.get(node.inputs["ids"].src)
        while src is not None and src.kind == "alias":
            src = spec.nodes.get(src.inputs["value"].src)
        if src is None or src.kind != "call" or _param(encoder, "vocab_size") is None:
            continue
        tokenizer = spec.blocks[src.block]
        if not hasattr(tokenizer.info.cls, "text_vocab"):
            continue
        params = {k: _param(tokenizer, k) for k in tokenizer.info.params if _param(tokenizer, k) is not None}
        try:
            vocab, eot_largest = tokenizer.info.cls.text_vocab(**params)
        except (ValueError, TypeError, OSError, RuntimeError):
            continue  # an unreadable tokenizer file: building the block reports it in one line
        where = f"block {node.block!r} ({encoder.kind}) reads ids from {src.block!r} ({tokenizer.kind})"
        if _param(encoder, "vocab_size") != vocab:
            errors.append(GraphError(f"{where}, whose vocabulary has {vocab} ids, but its vocab_size is "
                                     f"{_param(encoder, 'vocab_size')}", encoder.loc, node=node.block,
                                     expected=f"vocab_size: {vocab}"))
        t_enc, t_tok = _param(encoder, "context_length"), _param(tokenizer, "context_length")
        if t_enc is not None and t_tok is not None and t_tok > t_enc:
            errors.append(GraphError(f"{where} with context_length {t_tok}, more than the encoder's {t_enc}",
                                     encoder.loc, node=node.block, expected=f"context_length: {t_tok}"))
        if _param(encoder, "pool") == "argmax" and not eot_largest:
            errors.append(GraphError(f"{where}: pool 'argmax' picks the largest id, which is not this "
                                     f"tokenizer's end token", encoder.loc, node=node.block,
                                     expected="pool: last or first (or a tokenizer whose end token has the "
                                              "largest id, like tokenizer.clip_bpe)"))
    return errors


def _from_loss(spec, name, seen=None) -> bool:
    node = spec.nodes[name]
    if node.kind == "call":
        return spec.blocks[node.block].info.family == "loss"
    if node.kind == "alias":
        return _from_loss(spec, node.inputs["value"].src)
    return False


def _stop_gradients(spec: GraphSpec) -> list[GraphError]:
    """A value computed from a teacher or memory must cross a ``!sg`` edge before it enters a loss."""
    errors = []
    g = dependency_graph(spec)
    origin: dict[str, str] = {}  # node -> the teacher/memory block whose output reaches it without !sg
    for name in nx.topological_sort(g):
        node = spec.nodes[name]
        if node.kind == "call" and spec.blocks[node.block].info.family in STATEFUL_FAMILIES:
            origin[name] = node.block
        for port, edge in node.inputs.items():
            if edge.sg or edge.src not in origin:
                continue
            if node.kind == "call" and spec.blocks[node.block].info.family == "loss":
                block = spec.blocks[origin[edge.src]]
                errors.append(GraphError(
                    f"input {port!r} of loss '{node.block}' gets {edge.src!r}, computed by the "
                    f"{block.info.family} '{block.name}' ({block.kind}), without a stop-gradient",
                    edge.loc or node.loc, node=name, expected=f"'{port}: !sg {edge.src}'"))
            else:
                origin.setdefault(name, origin[edge.src])
    return errors


def _stages(spec: GraphSpec) -> list[GraphError]:
    errors = []
    for name, node in spec.nodes.items():
        if node.kind == "call" and node.stage == "data":
            for port, edge in node.inputs.items():
                if spec.nodes[edge.src].stage == "model":
                    errors.append(GraphError(
                        f"data-stage block '{node.block}' ({spec.blocks[node.block].kind}) is fed {edge.src!r}, a "
                        f"model-stage value", edge.loc or node.loc, node=name,
                        expected="data-stage blocks to read inputs or other data-stage values only"))
    for name in spec.objective:
        if spec.nodes[name].stage != "model":
            errors.append(GraphError(f"the objective {name!r} is computed in the data stage", spec.nodes[name].loc,
                                     node=name, expected="a loss computed by model-stage blocks"))
    return errors


def _trainable_reach(spec: GraphSpec) -> list[GraphError]:
    """Blocks with trainable parameters must reach the objective through at least one gradient path."""
    from composer.graph.compile import build_blocks
    modules = build_blocks(spec, "meta")
    reach = grad_nodes(spec)
    reaching_blocks = {spec.nodes[n].block for n in reach if spec.nodes[n].kind == "call"}
    errors = []
    for name, module in modules.items():
        if spec.blocks[name].info.stage != "model":
            continue
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        if trainable and name not in reaching_blocks:
            errors.append(GraphError(
                f"the block {name!r} has {trainable} trainable parameters but no gradient path to the objective",
                spec.blocks[name].loc, node=name,
                expected="its output to reach a loss without !sg (or freeze it: a teacher or a frozen block)"))
    return errors


def _collapse_warnings(spec: GraphSpec) -> list[str]:
    """Losses that nothing guards against representation collapse (the rules: ``composer.graph.collapse``)."""
    from composer.graph.collapse import collapse_warnings
    return collapse_warnings(spec)
