"""The parsed graph: blocks, value nodes, edges (with their stop-gradient flags), updates and the objective.

``parse(located)`` turns loaded YAML into a ``GraphSpec`` of flat nodes. Nesting is sugar:
``q: {projector: {encoder: x_q}}`` becomes two nodes, ``q__encoder = encoder(x_q)`` and
``q = projector(q__encoder)``. A block named where a value is expected (``negatives: !sg queue``) is a call of
that block with no inputs (it reads its state). Errors are collected and raised together as ``GraphErrors``.
"""
from __future__ import annotations

import dataclasses
import keyword
import re

from composer.blocks import registry
from composer.graph.loader import SG, Located
from composer.runtime.errors import GraphError, GraphErrors, Loc

TOP_LEVEL_KEYS = ("name", "description", "paper", "sources", "notes", "inputs", "blocks", "flow", "updates",
                  "objective", "embedding", "train", "variants", "data", "extends", "requires", "guards")
RESERVED = {"batch", "self", "torch", "grad_enabled", "operator", "getattr"}  # names in the generated code
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Edge:
    """A value flowing into a port: from node ``src`` (its output ``field`` if named), stopped if ``sg``."""

    src: str
    field: str | None
    sg: bool
    loc: Loc | None


@dataclasses.dataclass
class Node:
    """One value of the graph. ``kind``: ``input`` (from the data), ``call`` (a block), ``alias`` (renaming)."""

    name: str
    kind: str
    block: str | None
    inputs: dict[str, Edge]
    loc: Loc | None
    stage: str = "model"


@dataclasses.dataclass
class BlockSpec:
    name: str
    kind: str
    params: dict
    loc: Loc | None
    info: registry.BlockInfo

    @property
    def source(self) -> str | None:
        """The block a wrapper copies (``teacher.ema``'s ``source``)."""
        for p, value in self.params.items():
            if self.info.params.get(p) and self.info.params[p].annotation is registry.BlockRef:
                return value
        return None


@dataclasses.dataclass
class GraphSpec:
    name: str
    path: str
    located: Located
    inputs: list[str]
    blocks: dict[str, BlockSpec]
    nodes: dict[str, Node]
    flow_names: list[str]
    updates: dict[str, dict[str, Edge]]
    objective: dict[str, float]
    embedding: str | None
    train: dict
    # objective terms whose weight may be zero or negative, declared with ``{weight: w, allow_negative: true}``
    signed_objective: frozenset = frozenset()

    @property
    def data(self) -> dict:
        return self.located.data

    @property
    def data_spec(self) -> str | None:
        """The graph's own ``data:`` spec (``shapes:n=256,size=32``), the default of ``ptc train --data``."""
        named = self.data.get("data")
        return named if isinstance(named, str) else None

    def loc(self, *path) -> Loc | None:
        return self.located.loc(*path)

    def ports(self, block: str) -> dict[str, registry.Port]:
        """Input ports of ``block``; a wrapper has those of the block it wraps."""
        spec = self.blocks[block]
        if spec.info.ports_follow_source and spec.source in self.blocks and spec.source != block:
            return self.ports(spec.source)
        return spec.info.ports_for(spec.params)

    def outputs(self, block: str) -> tuple[str, ...] | None:
        spec = self.blocks[block]
        if spec.info.ports_follow_source and spec.source in self.blocks and spec.source != block:
            return self.outputs(spec.source)
        return spec.info.outputs


def parse(located: Located, path: str) -> GraphSpec:
    return _Parser(located, path).parse()


class _Parser:
    def __init__(self, located: Located, path: str):
        self.located, self.path = located, path
        self.data = located.data
        self.errors: list[GraphError] = []
        self.unknown_ports: set[str] = set()  # blocks whose ports could not be read (reported once)
        self.nodes: dict[str, Node] = {}
        self.blocks: dict[str, BlockSpec] = {}
        self.undefined: set[str] = set()  # values reported undefined: one line each, however often used
        self.broken: set[str] = set()  # blocks declared with an unknown type: reported once, at their type
        self.quiet: set[str] = set()  # nodes with an input left out after an error already reported
        self.broken: set[str] = set()  # blocks already reported (unknown type ...): their uses stay quiet

    def err(self, message, loc_path=(), node=None, expected=None, line_offset: int = 0):
        loc = self.located.loc(*loc_path) or Loc(self.path)
        if line_offset and loc.line:  # a line inside a multi-line value (an expression)
            loc = Loc(loc.file, loc.line + line_offset)
        self.errors.append(GraphError(message, loc, node, expected))

    # -- top level ---------------------------------------------------------------------------------------
    def parse(self) -> GraphSpec:
        d = self.data
        for key in d:
            if key not in TOP_LEVEL_KEYS:
                self.err(f"unknown top-level key {key!r}{registry.did_you_mean(key, TOP_LEVEL_KEYS)}", (key,),
                         expected="one of " + ", ".join(TOP_LEVEL_KEYS))
        for key in ("blocks", "flow"):
            if not isinstance(d.get(key), dict) or not d.get(key):
                self.err(f"'{key}' is missing or not a mapping", (key,) if key in d else (),
                         expected=f"a non-empty mapping under '{key}'")
        if self.errors:
            raise GraphErrors(self.errors)
        inputs = d.get("inputs", ["image"])
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            self.err("'inputs' must be a list of names", ("inputs",), expected="e.g. inputs: [image]")
            inputs = []
        self._parse_blocks()
        for name in inputs:
            if self._check_name(name, ("inputs",)):
                self.nodes[name] = Node(name, "input", None, {}, self.located.loc("inputs"), stage="data")
        flow = d["flow"]
        for name in flow:
            self._check_name(name, ("flow", name))
            if name in self.blocks:
                self.err(f"the value {name!r} has the name of a block", ("flow", name), node=name,
                         expected="value names distinct from block names")
            if name in inputs:
                self.err(f"the value {name!r} has the name of an input", ("flow", name), node=name,
                         expected="value names distinct from input names")
        for name, expr in flow.items():
            if name in self.nodes:
                continue
            self._parse_flow_entry(name, expr)
        from composer.graph.schema import check_params
        self.errors += check_params(self.blocks, self.located)
        updates = self._parse_updates()
        objective = self._parse_objective()
        embedding = d.get("embedding")
        if embedding is not None and embedding not in self.blocks and embedding not in self.broken:
            self.err(f"'embedding' names {embedding!r}, which is not a block{registry.did_you_mean(embedding, self.blocks)}",
                     ("embedding",), expected="the name of the encoder block used for evaluation and export")
        train = d.get("train") or {}
        if not isinstance(train, dict):
            self.err("'train' must be a mapping", ("train",), expected="train: {optimizer: ..., lr: ...}")
            train = {}
        if self.errors:
            raise GraphErrors(self.errors)
        name = d.get("name") or self.path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return GraphSpec(str(name), self.path, self.located, list(inputs), self.blocks, self.nodes, list(flow),
                         updates, objective, embedding, train, frozenset(self.signed_objective))

    def _check_name(self, name, loc_path) -> bool:
        if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
            self.err(f"{name!r} is not a valid name", loc_path, expected="a Python identifier such as x_q or loss_a")
            return False
        if name in RESERVED:
            self.err(f"{name!r} is a reserved name", loc_path, expected="a name other than " + ", ".join(sorted(RESERVED)))
            return False
        return True

    def _parse_blocks(self):
        from composer.graph.model import ComposedModel
        for name, body in self.data["blocks"].items():
            where = ("blocks", name)
            self.broken.add(name)  # until its body is read: one cause (a misspelt type), one line
            if not self._check_name(name, where):
                continue
            if hasattr(ComposedModel, name):  # blocks become attributes of the model
                self.err(f"{name!r} cannot name a block (it is a method of the model)", where, node=name,
                         expected="another name, e.g. " + name + "_block")
                continue
            if not isinstance(body, dict) or "type" not in body:
                self.err(f"block {name!r} needs a 'type'", where, node=name, expected="{type: family.name, ...params}")
                continue
            kind = body["type"]
            try:
                info = registry.get(str(kind))
            except KeyError as e:
                self.err(str(e.args[0]), where + ("type",), node=name, expected="a block type listed by 'ptc blocks'")
                self.broken.add(name)
                continue
            params = {k: v for k, v in body.items() if k != "type"}
            for p in params:
                if p not in info.params:
                    self.err(f"unknown parameter {p!r} for {kind}{registry.did_you_mean(p, info.params)}",
                             where + (p,), node=name,
                             expected="one of " + (", ".join(info.params) or "(no parameters)"))
            for p in info.params.values():
                if p.required and p.name not in params:
                    self.err(f"missing required parameter {p.name!r} for {kind}", where, node=name,
                             expected=p.doc or f"a value for {p.name}")
            self.blocks[name] = BlockSpec(name, kind, params, self.located.loc(*where), info)
            self.broken.discard(name)
        for spec in self.blocks.values():
            src = spec.source
            if src is not None and src not in self.blocks and src not in self.broken:
                ref_param = next(p for p, v in spec.params.items() if v == src)
                self.err(f"{spec.kind} refers to block {src!r}, which does not exist"
                         f"{registry.did_you_mean(src, self.blocks)}", ("blocks", spec.name, ref_param),
                         node=spec.name, expected="the name of another block")

    # -- flow ----------------------------------------------------------------------------------------------
    def _parse_flow_entry(self, name, expr):
        where = ("flow", name)
        if isinstance(expr, dict) and len(expr) == 1 and next(iter(expr)) in self.blocks.keys() | self.broken:
            block = next(iter(expr))
            self._call_node(name, block, expr[block], where + (block,))
        else:
            edge = self._edge(expr, where, name)
            if edge is not None:
                self.nodes[name] = Node(name, "alias", None, {"value": edge}, self.located.loc(*where))

    def _call_node(self, name, block, args, where) -> Node:
        node = Node(name, "call", block, {}, self.located.loc(*where))
        self.nodes[name] = node
        if block not in self.blocks:
            return node
        if self.blocks[block].info.ports_follow_source and self.blocks[block].source in self.broken:
            return node  # a wrapper of a block already reported: its ports are unknown
        ports = self._ports(block)
        if block in self.unknown_ports:  # already reported: no second line about its inputs
            return node
        if args is None or args == {}:
            named = {}
        elif isinstance(args, dict) and all(k in ports for k in args):
            named = dict(args)
        elif isinstance(args, dict) and len(args) == 1 and next(iter(args)) in self.blocks.keys() | self.broken:
            named = {self._first_port(block, name, where): args}
        elif isinstance(args, dict):
            bad = [k for k in args if k not in ports]
            for k in bad:
                self.err(f"{self.blocks[block].kind} ('{block}') has no input {k!r}{registry.did_you_mean(k, ports)}",
                         where + (k,), node=name, expected="one of " + (", ".join(ports) or "(no inputs)"))
            return node
        elif isinstance(args, list):
            if len(args) > len(ports):
                self.err(f"{len(args)} inputs given to '{block}', which takes {len(ports)}", where, node=name,
                         expected="inputs " + ", ".join(ports))
                return node
            named = dict(zip(ports, args))
        else:
            named = {self._first_port(block, name, where): args}
        for port, value in named.items():
            edge = self._edge(value, where + (port,) if isinstance(args, dict) else where, f"{name}__{port}", name)
            if edge is not None:
                node.inputs[port] = edge
        for port in ports.values():
            if port.required and port.name not in node.inputs and not self._errors_at(name):
                self.err(f"input {port.name!r} of '{block}' is not connected", where, node=name,
                         expected="inputs " + ", ".join(f"{p.name}" + ("" if p.required else "?") for p in ports.values()))
        return node

    def _errors_at(self, node) -> bool:
        return node in self.quiet or any(e.node == node for e in self.errors)

    def _first_port(self, block, node, where) -> str:
        ports = self._ports(block)
        if not ports:
            self.err(f"'{block}' takes no inputs", where, node=node, expected=f"{{{block}: null}} or just '{block}'")
            return "?"
        return next(iter(ports))

    def _ports(self, block) -> dict:
        spec = self.blocks[block]
        seen = set()
        while spec.info.ports_follow_source and spec.source in self.blocks and spec.name not in seen:
            seen.add(spec.name)
            spec = self.blocks[spec.source]
        try:
            return spec.info.ports_for(spec.params)
        except ValueError as e:  # an expression that does not parse: its ports are unknown, reported once
            if spec.name in self.unknown_ports:
                return {}
            self.unknown_ports.add(spec.name)
            param = getattr(spec.info.cls, "expression_param", "type")
            text = spec.params.get(param)
            block_scalar = isinstance(text, str) and "\n" in text  # `expr: |` starts on the next line
            self.err(f"{param}: {e}", ("blocks", spec.name, param), node=spec.name,
                     line_offset=getattr(e, "line", 1) - 1 + block_scalar)
            return {}

    def _edge(self, value, where, hint, owner=None) -> Edge | None:
        """An expression → the edge that carries its value, creating nodes for nested calls."""
        loc = self.located.loc(*where)
        owner = owner or hint
        sg = False
        while isinstance(value, SG):
            sg, value = True, value.value
        if isinstance(value, str):
            src, _, field = value.partition(".")
            if src in self.broken and src not in self.data["flow"]:
                self.quiet.add(owner)  # a block already reported
                return None
            if src in self.blocks and src not in self.data["flow"]:
                if src not in self.nodes:
                    self._call_node(src, src, None, where)
                    self.nodes[src].loc = loc
                elif self.nodes[src].block != src:
                    self.err(f"'{src}' is both a value and a block", where, node=owner)
            elif src not in self.nodes and src not in self.data["flow"]:
                self.quiet.add(owner)
                if src in self.undefined:
                    return None  # one cause, one line: its first use was reported
                self.undefined.add(src)
                candidates = [n for n in list(self.nodes) + list(self.data["flow"]) if "__" not in n]
                self.err(f"undefined value {src!r}{registry.did_you_mean(src, candidates)}", where, node=owner,
                         expected="an input, a value defined under 'flow', or a block name")
                return None
            return Edge(src, field or None, sg, loc)
        if isinstance(value, dict) and len(value) == 1:
            block = next(iter(value))
            if block in self.broken:
                self.quiet.add(owner)
                return None
            if block not in self.blocks:
                if block not in self.broken:  # a block whose type is unknown was reported at its type
                    self.err(f"unknown block {block!r}{registry.did_you_mean(block, self.blocks)}", where,
                             node=owner, expected="a block defined under 'blocks'")
                return None
            name = f"{hint.split('__')[0]}__{block}"
            i = 1
            while name in self.nodes or name in self.data["flow"]:
                i += 1
                name = f"{hint.split('__')[0]}__{block}{i}"
            self._call_node(name, block, value[block], where + (block,))
            return Edge(name, None, sg, loc)
        self.err(f"cannot read {value!r} as a value", where, node=owner,
                 expected="a value name, '!sg name', or {block: inputs}")
        return None

    # -- updates, objective --------------------------------------------------------------------------------
    def _parse_updates(self) -> dict[str, dict[str, Edge]]:
        raw = self.data.get("updates") or {}
        out: dict[str, dict[str, Edge]] = {}
        if not isinstance(raw, dict):
            self.err("'updates' must be a mapping", ("updates",), expected="updates: {block: {input: value}}")
            return out
        for block, args in raw.items():
            where = ("updates", block)
            if block not in self.blocks:
                if block not in self.broken:
                    self.err(f"'updates' names {block!r}, which is not a block"
                             f"{registry.did_you_mean(block, self.blocks)}", where, node=block,
                             expected="a block with an update() method")
                continue
            info = self.blocks[block].info
            if not info.has_update:
                self.err(f"{info.kind} has no state update", where, node=block,
                         expected="only blocks with update() (memories, teachers, ...) under 'updates'")
                continue
            if not isinstance(args, dict):
                self.err("update inputs must be a mapping", where, node=block,
                         expected=", ".join(f"{p}: value" for p in info.update_inputs))
                continue
            out[block] = {}
            for port, value in args.items():
                if port not in info.update_inputs:
                    self.err(f"{info.kind} update has no input {port!r}{registry.did_you_mean(port, info.update_inputs)}",
                             where + (port,), node=block, expected="one of " + (", ".join(info.update_inputs) or "(none)"))
                    continue
                edge = self._edge(value, where + (port,), f"update_{block}", block)
                if edge is not None:
                    out[block][port] = edge
        for name, spec in self.blocks.items():
            given = (self.data.get("updates") or {}).get(name)
            given = given if isinstance(given, dict) else {}
            missing = [p.name for p in spec.info.update_inputs.values() if p.required and p.name not in given]
            if missing:
                self.err(f"{spec.kind} needs update inputs {', '.join(missing)}", ("blocks", name), node=name,
                         expected=f"updates: {{{name}: {{{missing[0]}: !sg value}}}}")
        return out

    def _parse_objective(self) -> dict[str, float]:
        """``objective: loss``, ``{loss_a: 1.0, loss_b: 0.5}``, or a term written ``{weight: -0.1,
        allow_negative: true}``: a weight <= 0 on purpose (a term maximised rather than minimised)."""
        raw = self.data.get("objective", "loss")
        if isinstance(raw, str):
            raw = {raw: 1.0}
        if not isinstance(raw, dict) or not raw:
            self.err("'objective' must name a value or map values to weights", ("objective",),
                     expected="objective: loss, or objective: {loss_a: 1.0, loss_b: 0.5}")
            return {}
        out = {}
        self.signed_objective = set()
        for name, weight in raw.items():
            where = ("objective", name)
            if isinstance(weight, dict):
                unknown = sorted(set(weight) - {"weight", "allow_negative"})
                signed = weight.get("allow_negative", False)
                if unknown or "weight" not in weight or not isinstance(signed, bool):
                    self.err(f"the objective term {name!r} is {weight!r}", where, node=name,
                             expected="a number, or {weight: -0.1, allow_negative: true}")
                    continue
                if signed:
                    self.signed_objective.add(name)
                weight, where = weight["weight"], ("objective", name, "weight")
            if name not in self.nodes:
                self.err(f"the objective names {name!r}, which is not a value"
                         f"{registry.did_you_mean(name, self.nodes)}", ("objective",), node=name,
                         expected="a loss value defined under 'flow'")
            elif isinstance(weight, bool) or not isinstance(weight, (int, float)):
                self.err(f"the objective weight of {name!r} is {weight!r}", where, node=name,
                         expected="a number")
            else:
                out[name] = float(weight)
        return out
