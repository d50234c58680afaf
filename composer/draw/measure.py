"""Sizes for diagrams and handouts: symbolic tensor shapes, parameter counts per block, FLOPs per step.

Shapes are read from two dry runs (``composer.graph.shapes.dry_run``) on example batches of 2 and 3 samples: a
dimension that grows from 2a to 3a is ``aN`` (N: the samples one process holds in one forward), one that stays
is a constant. A constant that equals an integer block parameter whose documentation names a symbol (``size: K,
the number of keys``; ``dim: K, the output dimension``; ``local_crops: number of local crops V``) is written with
that symbol, so MoCo's negative logits read ``N x K`` as in the paper's Algorithm 1; an encoder's output width is
``D``. A dimension that changes between the two runs in another way (I-JEPA's random block sizes) is written
with a trailing ``*``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward and one backward of the model
stage at the graph's own batch size (``train.batch_size``, the global batch, all in one process), on the
``meta`` device, where no weight or activation is allocated; if a block cannot run on ``meta`` the count falls
back to the example batch on the CPU, and ``Flops.where`` says which. The data stage (augmentations, maskers) is
not counted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import re

import numpy as np
import torch

from composer.graph.spec import GraphSpec

BATCH = "N"
EXAMPLES = (2, 3)  # two example batch sizes; 2 is the validator's (BatchNorm needs two values per channel)
_SYMBOL = re.compile(r"(?<![\w'])([A-Z])(?![\w'])")
_NOT_SYMBOLS = {"A", "I", BATCH}  # articles and the batch symbol
MIN_SYMBOLIC = 4  # 1, 2 and 3 (two views, RGB channels) are too common to stand for a parameter


@dataclasses.dataclass(frozen=True)
class Symbol:
    """A named size: ``K = 65536``, read from ``where`` (``queue.size``), explained by ``doc``."""

    name: str
    value: int
    where: str
    doc: str


@dataclasses.dataclass
class Shapes:
    """Every value's shape in symbols: ``dims[node]`` is a tuple of dimension strings (``("N", "C")``), a dict
    field → tuple for named outputs, or a string for anything else; ``examples`` are the values at N = 2."""

    dims: dict[str, object]
    examples: dict[str, object]
    symbols: dict[str, Symbol]
    varies: bool = False

    def of(self, node: str, field: str | None = None, sep: str = " x ") -> str:
        """``"N x C"``; ``"scalar"`` for a 0-d tensor; named outputs joined as ``"a: N x L, b: N x M"``."""
        d = self.dims.get(node)
        if isinstance(d, dict):
            if field is not None:
                d = d.get(field)
            else:
                return ", ".join(f"{f}: {_join(v, sep)}" for f, v in d.items())
        return _join(d, sep)

    def tuple(self, node: str, field: str | None = None) -> tuple[str, ...] | None:
        d = self.dims.get(node)
        if isinstance(d, dict):
            d = d.get(field) if field is not None else None
        return d if isinstance(d, tuple) else None


def _join(d, sep: str) -> str:
    if d is None:
        return "?"
    if isinstance(d, str):
        return d
    return sep.join(d) if d else "scalar"


# -- symbols and shapes ------------------------------------------------------------------------------------------
def param_symbols(spec: GraphSpec) -> dict[str, Symbol]:
    """Symbols named by the documentation of the graph's integer parameters (first block wins a letter)."""
    out: dict[str, Symbol] = {}
    for name, bs in spec.blocks.items():
        for p in bs.info.params.values():
            value = bs.params.get(p.name, p.default)
            if p.annotation is not int or isinstance(value, bool) or not isinstance(value, int) \
                    or value < MIN_SYMBOLIC:
                continue
            clause = re.split(r"[(;.]", p.doc, maxsplit=1)[0]
            found = [s for s in _SYMBOL.findall(clause) if s not in _NOT_SYMBOLS]
            if found and found[0] not in out:
                out[found[0]] = Symbol(found[0], value, f"{name}.{p.name}", clause.strip().rstrip(","))
        # sizes a block keeps inside list parameters (augment.views: the side and number of its views)
        for letter, value, pname, doc in getattr(bs.info.cls, "shape_symbols", lambda _: [])(bs.params):
            if value >= MIN_SYMBOLIC and letter not in out:
                out[letter] = Symbol(letter, value, f"{name}.{pname}", doc)
    return out


def _by_value(symbols: dict[str, Symbol]) -> dict[int, str]:
    """value → symbol, leaving out values claimed by two different symbols (ambiguous)."""
    claims: dict[int, set[str]] = {}
    for s in symbols.values():
        claims.setdefault(s.value, set()).add(s.name)
    return {v: next(iter(names)) for v, names in claims.items() if len(names) == 1}


def _dim(d2: int, d3: int, named: dict[int, str]) -> tuple[str, bool]:
    """One dimension from its sizes at the two example batches → (text, varies)."""
    if d2 == d3:
        return named.get(d2, str(d2)), False
    if d2 % EXAMPLES[0] == 0 and d3 * EXAMPLES[0] == d2 * EXAMPLES[1]:
        a = d2 // EXAMPLES[0]
        return (BATCH if a == 1 else f"{a}{BATCH}"), False
    return f"{d2}*", True


def _dims(v2, v3, named) -> tuple[object, bool]:
    if isinstance(v2, torch.Tensor) and isinstance(v3, torch.Tensor):
        if v2.dim() != v3.dim():
            return tuple(f"{d}*" for d in v2.shape), True
        parts = [_dim(a, b, named) for a, b in zip(v2.shape, v3.shape)]
        return tuple(p for p, _ in parts), any(v for _, v in parts)
    if isinstance(v2, tuple) and hasattr(v2, "_fields") and type(v2) is type(v3):
        out, varies = {}, False
        for f in v2._fields:
            d, v = _dims(getattr(v2, f), getattr(v3, f), named)
            out[f], varies = d, varies or v
        return out, varies
    from composer.graph.shapes import describe
    return describe(v2), False


def example_runs(spec: GraphSpec) -> list[dict[str, object]]:
    """Every node's value from dry runs at the ``EXAMPLES`` batch sizes (meta tensors in the model stage).

    Seeded, so random sizes (I-JEPA's mask blocks) come out the same each time and the gallery is
    reproducible; the caller's random state is restored afterwards."""
    from composer.graph.shapes import dry_run, example_batch
    with _seeded(0):
        return [dry_run(spec, example_batch(spec, n)) for n in EXAMPLES]


@contextlib.contextmanager
def _seeded(seed: int):
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def symbolic_shapes(spec: GraphSpec, runs: list[dict] | None = None) -> Shapes:
    """Name every dimension of every value (see the module docstring); ``runs`` from ``example_runs``."""
    runs = example_runs(spec) if runs is None else runs
    symbols = param_symbols(spec)
    _encoder_width(spec, runs[0], symbols)
    named = _by_value(symbols)
    dims, varies = {}, False
    for node in spec.nodes:
        if node in runs[0] and node in runs[1]:
            dims[node], v = _dims(runs[0][node], runs[1][node], named)
            varies = varies or v
    used = {s for d in dims.values() for t in (d.values() if isinstance(d, dict) else [d])
            if isinstance(t, tuple) for s in t}
    symbols = {k: s for k, s in symbols.items() if k in used}
    return Shapes(dims, {n: runs[0][n] for n in spec.nodes if n in runs[0]}, symbols, varies)


def _encoder_width(spec: GraphSpec, values: dict, symbols: dict[str, Symbol]) -> None:
    """Call an encoder's output width ``D`` (ResNet-50's 2048, ViT-S's 384) unless a parameter named it."""
    if "D" in symbols:
        return
    for name, node in spec.nodes.items():
        block = spec.blocks.get(node.block) if node.kind == "call" else None
        if block is None or block.info.family != "encoder" or not isinstance(values.get(name), torch.Tensor):
            continue
        width = values[name].shape[-1] if values[name].dim() else 0
        if width > 1 and width not in {s.value for s in symbols.values()}:
            symbols["D"] = Symbol("D", int(width), f"{node.block} output", f"the output width of {block.kind}")
        return


# -- parameters ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Counts:
    trainable: int  # parameters the optimizer updates
    frozen: int     # parameters without gradient (EMA teachers, frozen tokenizers)
    buffers: int    # state values (queues, centres, BatchNorm statistics)


def build_meta(spec: GraphSpec) -> dict[str, torch.nn.Module]:
    """Every block built without storage (``meta``), or on the CPU where a block needs real values."""
    from composer.graph.compile import build_blocks
    try:
        return build_blocks(spec, "meta")
    except Exception:  # a block whose constructor computes on its tensors: build it for real
        return build_blocks(spec, "cpu")


def param_counts(spec: GraphSpec, modules: dict[str, torch.nn.Module] | None = None) -> dict[str, Counts]:
    modules = build_meta(spec) if modules is None else modules
    out = {}
    for name, m in modules.items():
        params = list(m.parameters())
        out[name] = Counts(sum(p.numel() for p in params if p.requires_grad),
                           sum(p.numel() for p in params if not p.requires_grad),
                           sum(b.numel() for b in m.buffers()))
    return out


def human(n: float) -> str:
    """``23.5M``, ``8.33T``, ``512``: three significant digits with an SI suffix."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale * 0.9995:  # 999.6T reads 1P, not 1e+03T
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}" if isinstance(n, float) and n != int(n) else str(int(n))


# -- FLOPs ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Flops:
    forward: int
    backward: int
    per_block: dict[str, int]  # forward FLOPs of each block, all its calls together
    batch: int
    where: str                 # "meta" (the graph's batch, no memory) or "cpu" (the example batch)

    @property
    def step(self) -> int:
        return self.forward + self.backward


def batch_size(spec: GraphSpec) -> int:
    size = (spec.train or {}).get("batch_size", 256)
    return int(size) if isinstance(size, int) and size > 0 else 256


def count_flops(spec: GraphSpec, batch: int | None = None, runs: list[dict] | None = None) -> Flops:
    """FLOPs of one training step (forward + backward of the model stage) on ``batch`` samples in one process.

    The default ``batch`` is ``train.batch_size``, the global batch: the count is that of the whole step run by a
    single process; W processes share it, each running ``batch / W`` samples.
    """
    from composer.graph.compile import assign_stages, build_blocks, build_stage
    assign_stages(spec)
    n = batch_size(spec) if batch is None else batch
    runs = example_runs(spec) if runs is None else runs
    try:
        modules = build_blocks(spec, "meta")
        gm, reads = build_stage(spec, modules, "model")
        inputs = {k: _scaled(runs[0][k], runs[1][k], n) for k in reads}
        return _count(gm, inputs, n, "meta")
    except Exception:  # a block without meta kernels: count on the example batch, for real
        modules = build_blocks(spec, "cpu")
        gm, reads = build_stage(spec, modules, "model")
        return _count(gm, {k: runs[0][k] for k in reads}, EXAMPLES[0], "cpu")


def _count(gm, inputs: dict, n: int, where: str) -> Flops:
    from torch.utils.flop_counter import FlopCounterMode
    prefix = type(gm).__name__ + "."
    with FlopCounterMode(display=False) as fwd:
        out = gm(inputs)
    per_block: dict[str, int] = {}
    for key, ops in fwd.get_flop_counts().items():
        if key.startswith(prefix) and "." not in key[len(prefix):]:
            per_block[key[len(prefix):]] = int(sum(ops.values()))
    backward = 0
    loss = out["loss"]
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        backward = int(bwd.get_total_flops())
    return Flops(int(fwd.get_total_flops()), backward, per_block, n, where)


def _scaled(v2, v3, n: int):
    """An empty ``meta`` value like the example ``v2`` with its batch dimensions grown to ``n`` samples."""
    if isinstance(v2, torch.Tensor):
        shape = []
        for a, b in zip(v2.shape, v3.shape):
            grows = a != b and a % EXAMPLES[0] == 0 and b * EXAMPLES[0] == a * EXAMPLES[1]
            shape.append(a // EXAMPLES[0] * n if grows else a)
        return torch.empty(shape, dtype=v2.dtype, device="meta")
    if isinstance(v2, tuple) and hasattr(v2, "_fields"):
        return type(v2)(*[_scaled(a, b, n) for a, b in zip(v2, v3)])
    if isinstance(v2, (list, tuple)):
        return type(v2)(_scaled(a, b, n) for a, b in zip(v2, v3))
    return v2
