"""Parameters sized from the block wired to them: ``encoder.text``'s ``vocab_size: auto`` (its default) becomes
the vocabulary of the tokenizer whose ids it reads, so that swapping ``tokenizer.bytes`` (258 ids) for CLIP's BPE
(49408) or a Hugging Face ``tokenizer.json`` resizes the embedding table without a second edit.

Resolved right after parsing, before anything is checked or built: every later stage sees a number. A number
written in the graph is kept, and the validator still reports one that differs from the tokenizer's
(``composer.graph.validate``). ``auto`` on a block whose ids do not come from a tokenizer is one line.
"""
from __future__ import annotations

from composer.graph.spec import BlockSpec, Node
from composer.runtime.errors import GraphError

AUTO = "auto"
# (parameter, the input port it sizes, the producer's class method giving (size, ...) from its parameters)
RULES = (("vocab_size", "ids", "text_vocab"),)


def resolve_auto(blocks: dict[str, BlockSpec], nodes: dict[str, Node], located) -> list[GraphError]:
    """Replace each ``auto`` parameter of ``blocks`` in place by the size its producer declares; the errors."""
    errors, found = [], {}
    for node in nodes.values():
        if node.kind != "call":
            continue
        block = blocks[node.block]
        for param, port, method in RULES:
            if param not in block.info.params or _value(block, param) != AUTO:
                continue
            where = located.loc("blocks", block.name, param) if param in block.params else block.loc
            producer = _producer(blocks, nodes, node.inputs.get(port))
            if producer is None or not hasattr(producer.info.cls, method):
                what = f"'{node.inputs[port].src}'" if port in node.inputs else "nothing"
                errors.append(GraphError(f"{param} 'auto' of {block.kind} takes the size from the block that "
                                         f"computes its {port!r} input, but {what} has none", where,
                                         node=block.name, expected=f"{param}: a number, or {port!r} from a "
                                                                    f"tokenizer block"))
                continue
            params = {k: _value(producer, k) for k in producer.info.params if _value(producer, k) is not None}
            try:
                size = int(getattr(producer.info.cls, method)(**params)[0])
            except (ValueError, TypeError, OSError, RuntimeError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                errors.append(GraphError(f"{param} 'auto' of {block.kind} reads the size of {producer.kind} "
                                         f"'{producer.name}', which fails: {first}", producer.loc,
                                         node=producer.name))
                continue
            found.setdefault((block.name, param), {})[size] = producer.name
    for (name, param), sizes in found.items():
        if len(sizes) > 1:  # one block (one embedding table) fed by tokenizers of different sizes
            listed = ", ".join(f"{s} from '{p}'" for s, p in sizes.items())
            errors.append(GraphError(f"{param} 'auto' of '{name}' gets different sizes ({listed})",
                                     blocks[name].loc, node=name, expected=f"{param}: {max(sizes)}"))
        else:
            blocks[name].params[param] = next(iter(sizes))
    return errors


def _producer(blocks, nodes, edge) -> BlockSpec | None:
    """The block computing the value on ``edge`` (through aliases), or None."""
    name = edge.src if edge is not None else None
    seen = set()
    while name in nodes and name not in seen:
        seen.add(name)
        node = nodes[name]
        if node.kind == "call":
            return blocks[node.block]
        if node.kind != "alias":
            return None
        name = node.inputs["value"].src
    return None


def _value(block: BlockSpec, name: str):
    if name in block.params:
        return block.params[name]
    param = block.info.params.get(name)
    return None if param is None or param.required else param.default
