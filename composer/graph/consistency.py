"""Cross-block consistency: parameters of two connected blocks that must agree (a head's vocabulary and the
tokenizer or codebook whose ids it predicts or embeds).

The shape dry run cannot see these: logits over 8191 classes against ids in [0, 8192) have matching shapes, and
the run on the meta device never compares id values. An off-by-one vocabulary trains silently (a class that is
never a target) or crashes in training (an id beyond an embedding table). Two blocks are connected when their
values meet: one is computed from the other, or both feed the same node (a loss).
"""
from __future__ import annotations

import dataclasses
import operator

import networkx as nx

from composer.graph.compile import dependency_graph
from composer.graph.spec import BlockSpec, GraphSpec
from composer.graph.train_section import TrainConfig
from composer.runtime.errors import GraphError


@dataclasses.dataclass(frozen=True)
class Rule:
    """``consumer.param  <relation>  producer.source`` whenever a ``consumer`` block meets a ``producer`` block."""

    consumer: str
    param: str
    producers: tuple[str, ...]
    source: str  # a parameter of the producer, or its class attribute of that name
    relation: str  # "==" or ">="
    why: str


_OPS = {"==": operator.eq, ">=": operator.ge}

RULES = (
    # BEiT: the masked-image-modelling head predicts one logit per visual token of the tokenizer's codebook
    # (microsoft/unilm beit: run_beit_pretraining.py · --num_visual_tokens feeds both the head and the dVAE).
    Rule("head.beit_lm", "vocab_size", ("tokenizer.frozen", "tokenizer.dvae"), "num_tokens", "==",
         "one logit per visual token of the codebook"),
    # CLIP: the token embedding needs a row for every id the tokenizer emits (openai/CLIP model.py · vocab_size).
    Rule("encoder.text", "vocab_size", ("tokenizer.bytes",), "vocab_size", ">=",
         "an embedding row for every token id"),
)


def consistency_errors(spec: GraphSpec) -> list[GraphError]:
    errors = batch_multiple_errors(spec)
    g = dependency_graph(spec)
    calls: dict[str, list[str]] = {}
    for name, node in spec.nodes.items():
        if node.kind == "call":
            calls.setdefault(node.block, []).append(name)
    for rule in RULES:
        for consumer in (b for b in spec.blocks.values() if b.kind == rule.consumer):
            for producer in (b for b in spec.blocks.values() if b.kind in rule.producers):
                if not _meet(g, calls.get(consumer.name, []), calls.get(producer.name, [])):
                    continue
                mine, theirs = _value(consumer, rule.param), _value(producer, rule.source)
                if not isinstance(mine, int) or not isinstance(theirs, int) or _OPS[rule.relation](mine, theirs):
                    continue
                where = ("blocks", consumer.name, rule.param) if rule.param in consumer.params else \
                    ("blocks", consumer.name)
                errors.append(GraphError(
                    f"{rule.param} {mine} of {consumer.kind} does not match {producer.kind} '{producer.name}' "
                    f"({rule.source} {theirs})", spec.loc(*where), node=consumer.name,
                    expected=f"{rule.param} {rule.relation} {theirs}: {rule.why}"))
    return errors


def batch_multiple_errors(spec: GraphSpec) -> list[GraphError]:
    """A block's ``batch_multiple`` parameters (a queue's length) must be multiples of ``train.batch_size``, the
    global batch, so every step writes whole batches (SwAV rounds its queue length down to a multiple of
    batch_size × world_size; memory.fifo declares it)."""
    batch = (spec.train or {}).get("batch_size", TrainConfig.batch_size)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        return []  # the train section reports it
    errors = []
    for block in spec.blocks.values():
        for name in getattr(block.info.cls, "batch_multiple", ()):
            value = _value(block, name)
            if isinstance(value, int) and not isinstance(value, bool) and value % batch:
                down = value - value % batch
                errors.append(GraphError(
                    f"parameter {name!r} of {block.kind}: {value} is not a multiple of train.batch_size {batch}",
                    spec.loc("blocks", block.name, name) if name in block.params else spec.loc("blocks", block.name),
                    node=block.name, expected=f"a multiple of the global batch {batch}"
                                              + (f", e.g. {down} (rounded down)" if down else "")))
    return errors


def _meet(g: nx.DiGraph, a: list[str], b: list[str]) -> bool:
    """Whether a node of ``a`` and a node of ``b`` are related or share a descendant."""
    for x in a:
        down_x = nx.descendants(g, x) | {x}
        for y in b:
            down_y = nx.descendants(g, y) | {y}
            if x in down_y or y in down_x or down_x & down_y:
                return True
    return False


def _value(block: BlockSpec, name: str):
    if name in block.params:
        return block.params[name]
    if name in block.info.params:
        return block.info.params[name].default
    return getattr(block.info.cls, name, None)
