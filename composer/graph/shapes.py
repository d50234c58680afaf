"""The dry run: execute a graph on a tiny example batch to find shape mismatches before weights exist.

The data stage runs for real on two samples of the embedded dataset (augmentations are cheap); the model stage
runs on the ``meta`` device, where modules have shapes but no storage, so checking a ResNet-50 graph allocates
no weights. A failing node is reported with its block, the producers of its inputs and their shapes.
"""
from __future__ import annotations

import copy

import torch
from torch import fx

from composer.graph.compile import build_blocks, build_stage
from composer.graph.mismatch import LeafTracker, expectation, fmt, layer_name, parameter_holding
from composer.graph.spec import GraphSpec
from composer.runtime.errors import GraphError, GraphErrors

EXAMPLE_SIZE = 2  # BatchNorm in train mode needs more than one value per channel


def describe(value) -> str:
    """``2x128`` for a tensor, ``context: 2x10, targets: 4x2x5`` for named outputs, ``list[2]`` for lists."""
    if isinstance(value, torch.Tensor):
        return "x".join(str(d) for d in value.shape) if value.dim() else "scalar"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ", ".join(f"{f}: {describe(getattr(value, f))}" for f in value._fields)
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{len(value)}]"
    return type(value).__name__


def example_batch(spec: GraphSpec, n: int = EXAMPLE_SIZE) -> dict:
    """A raw batch with the graph's inputs, drawn from the embedded shapes dataset."""
    from composer.data.shapes import example_batch as shapes_batch
    batch = shapes_batch(n=n)
    missing = [i for i in spec.inputs if i not in batch]
    if missing:
        raise GraphErrors([GraphError(f"input {m!r} is not provided by the embedded data", spec.loc("inputs"),
                                      expected="inputs among " + ", ".join(batch)) for m in missing])
    return {k: batch[k] for k in spec.inputs}


class _Recorder(fx.Interpreter):
    """Runs a GraphModule node by node, keeping every value and turning a failure into a GraphError."""

    def __init__(self, gm: fx.GraphModule, spec: GraphSpec):
        super().__init__(gm)
        self.spec = spec
        self.values: dict[str, object] = {}

    def run_node(self, n: fx.Node):
        tracker = LeafTracker()
        try:
            with tracker:
                out = super().run_node(n)
        except GraphErrors:
            raise
        except Exception as e:  # any failure of a block on the example: report it at the node
            raise (self._mismatch(n, tracker) or self._error(n, e)) from e
        self.values[n.name] = out
        return out

    def _mismatch(self, n: fx.Node, tracker: LeafTracker) -> GraphError | None:
        """A size mismatch in words, naming the failing block's layer and the block whose output it got."""
        failing = tracker.failing()
        if n.op != "call_module" or failing is None:
            return None
        found = expectation(*failing)
        if found is None or found[1] == found[2]:
            return None
        what, expected, got, axis = found
        name, kind = n.target, self.spec.blocks[n.target].kind
        layer = layer_name(self.module.get_submodule(n.target), failing[0])
        block = self.spec.blocks[n.target]
        param = parameter_holding(block.params, expected)
        holder = (n.target, param.split("[")[0]) if param else None
        if param is None and block.source in self.spec.blocks:  # a wrapper (teacher.ema): its source's parameter
            param = parameter_holding(self.spec.blocks[block.source].params, expected)
            holder = (block.source, param.split("[")[0]) if param else None
            param = f"{block.source}'s {param}" if param else None
        given = f"it gets {fmt(got)}"
        for port, arg in n.kwargs.items():
            src = _source(arg)
            value = self.values.get(src.name) if src is not None else None
            if isinstance(value, torch.Tensor) and value.dim() and _size_at(value, axis, got):
                label, producer = self._producer(src)
                given = f"its input {port!r} has {fmt(got)} {what}, from {producer} (value {label!r}: {describe(value)})"
                break
        spec_node = self.spec.nodes.get(n.name)
        wraps = f" of '{block.source}'" if block.source else ""
        return GraphError(
            f"'{name}' ({kind}{wraps}) expects {fmt(expected)} {what} (its layer '{layer}', a "
            f"{type(failing[0]).__name__}{'; set by ' + param if param else ''}) but {given}",
            self._where(n, holder), node=n.name,
            expected=f"the two sizes to agree ({fmt(expected)} vs {fmt(got)}): change the parameters of '{name}' or what "
                     f"feeds it")

    def _where(self, n: fx.Node, holder: tuple[str, str] | None = None):
        """Where a failure at node ``n`` is reported: the node's flow line, unless that line is in a base graph
        (``extends:``) and the file being checked (or ``--set``) wrote a parameter that feeds the failure, which
        is then the line: the size-setting parameter ``holder``, else a parameter of a block computing one of its
        inputs, of the failing block, or of its source."""
        spec_node = self.spec.nodes.get(n.name)
        loc = spec_node.loc if spec_node is not None else None
        if loc is None or loc.file == self.spec.path or n.op != "call_module":
            return loc
        blocks = []
        for arg in n.kwargs.values():  # what computes its inputs first: the message is about them
            src = _source(arg)
            label = self._producer(src)[1] if src is not None else ""
            blocks += [b for b in self.spec.blocks if label.startswith(f"'{b}' ")]
        blocks += [n.target, self.spec.blocks[n.target].source]
        paths = [("blocks", *holder)] if holder else []
        paths += [("blocks", b, p) for b in blocks if b in self.spec.blocks for p in self.spec.blocks[b].params]
        for path in paths:
            where = self.spec.located.locs.get(path)
            if where is not None and where.file != loc.file:
                return where
        return loc

    def _error(self, n: fx.Node, e: Exception) -> GraphError:
        name = n.name
        loc = self._where(n)
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if n.op == "call_module":
            kind = self.spec.blocks[n.target].kind
            feeds = []
            for port, arg in n.kwargs.items():
                src = _source(arg)
                if src is not None and src.name in self.values:
                    feeds.append(f"input {port!r} from node '{src.name}' has shape {describe(self.values[src.name])}")
            detail = "; ".join(feeds)
            return GraphError(f"'{n.target}' ({kind}) fails: {what}" + (f" ({detail})" if detail else ""), loc,
                              node=name, expected="inputs whose shapes the block accepts")
        return GraphError(f"{what}", loc, node=name)

    def _producer(self, src: fx.Node) -> tuple[str, str]:
        """``(value label, producer)``: ``('z__encoder', "'encoder' (encoder.timm)")``; a named output read
        with ``latent.tokens`` gives ``('latent.tokens', "'encoder' (...)")``; a data input, ``the input 'image'``."""
        label, value = src.name, src.name
        if src.op == "call_function" and len(src.args) == 2 and isinstance(src.args[1], str) \
                and isinstance(src.args[0], fx.Node):
            value = src.args[0].name
            label = f"{value}.{src.args[1]}"
        node = self.spec.nodes.get(value)
        while node is not None and node.kind == "alias":
            node = self.spec.nodes.get(node.inputs["value"].src)
        if node is not None and node.kind == "call":
            return label, f"'{node.block}' ({self.spec.blocks[node.block].kind})"
        return label, f"the input {value!r}"


def _size_at(value: torch.Tensor, axis: int, size) -> bool:
    if isinstance(size, tuple):
        return tuple(value.shape[-len(size):]) == size
    return value.dim() > abs(axis) - (axis < 0) and value.shape[axis] == size


def _source(arg):
    while isinstance(arg, fx.Node) and arg.op == "call_method" and arg.target == "detach":
        arg = arg.args[0]
    return arg if isinstance(arg, fx.Node) else None


def _to_meta(value):
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*[_to_meta(v) for v in value])
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


def dry_run(spec: GraphSpec, batch: dict | None = None) -> dict[str, object]:
    """Run both stages on an example; return every node's value (meta tensors for the model stage)."""
    from composer.graph.compile import assign_stages
    assign_stages(spec)
    batch = example_batch(spec) if batch is None else batch
    data_blocks = {n: b for n, b in spec.blocks.items() if b.info.stage == "data"}
    data_modules = _construct(spec, "cpu", only=set(data_blocks))
    data_gm, _ = build_stage(spec, data_modules, "data")
    rec = _Recorder(data_gm, spec)
    with torch.no_grad():
        data_out = rec.run(batch)
    values = dict(rec.values)
    for device in ("meta", "cpu"):
        modules = _construct(spec, device)
        model_gm, _ = build_stage(spec, modules, "model")
        model_batch = {**batch, **data_out}
        if device == "meta":
            model_batch = _to_meta(model_batch)
        rec = _Recorder(model_gm, spec)
        try:
            rec.run(model_batch)
        except GraphError as e:
            if device == "meta" and _meta_unsupported(e.__cause__):
                continue  # an operator without a meta kernel: repeat on two real samples
            raise GraphErrors([e]) from None
        values.update(rec.values)
        return values
    return values


def _meta_unsupported(e) -> bool:
    text = str(e)
    return isinstance(e, NotImplementedError) or "meta" in text.lower() and "tensor" in text.lower()


def _construct(spec: GraphSpec, device: str, only: set[str] | None = None):
    """Build the blocks (all, or those named in ``only``) on ``device``."""
    if only is None:
        return build_blocks(spec, device)
    sub = copy.copy(spec)
    sub.blocks = {n: b for n, b in spec.blocks.items() if n in only}
    return build_blocks(sub, device)
