"""The mathematics of each block kind, written with the graph's own value names and sizes, for ``ptc explain``.

``forward_lines(ctx)`` gives the equations a loss computes inside its call (MoCo's ``l_pos``, ``l_neg`` and
``logits`` of Algorithm 1); ``update_lines(ctx)`` gives a state update (EMA, queue, centre). Each line is
``(equation, size)``. The formulas restate the official code cited in each block's docstring;
a kind without an entry falls back to the first line of its docstring. ``structure`` spells out a head's layers.

A block class (a plugin's, say) supplies its own lines with a static method ``equations(ctx)`` (and
``update_equations(ctx)`` for its state update) returning ``[(equation, size), ...]``; ``ctx`` is a ``Ctx``:
``ctx.arg(port)`` is the value's name in the graph, ``ctx.d(port, axis, "N")`` its symbolic size, ``ctx.p(name)``
a parameter's value. Blocks need not import this module: the context is passed in.
"""
from __future__ import annotations

import dataclasses
import re

from composer.draw.render import format_value, resolve
from composer.graph.spec import GraphSpec, Node

W_N = "W·N"  # the global batch: N samples on each of W processes


@dataclasses.dataclass
class Ctx:
    """One call (``node``) or one update (``block``) with access to its arguments, sizes and parameters."""

    spec: GraphSpec
    block: str
    node: Node | None
    shapes: object | None          # composer.draw.measure.Shapes
    ports: dict | None = None      # for updates: port → Edge

    @property
    def edges(self) -> dict:
        return self.ports if self.ports is not None else self.node.inputs

    def arg(self, port: str) -> str:
        """The value on ``port`` by the name the graph gives it (``crops.global_crops``)."""
        e = self.edges.get(port)
        return f"{e.src}.{e.field}" if e is not None and e.field else (e.src if e is not None else port)

    def d(self, port: str, axis: int, default: str) -> str:
        """The symbolic size of ``port``'s value along ``axis`` (``default`` when unknown)."""
        e = self.edges.get(port)
        if e is None or self.shapes is None:
            return default
        r = resolve(self.spec, e)
        dims = self.shapes.tuple(r.src, r.field)
        return dims[axis] if dims is not None and -len(dims) <= axis < len(dims) else default

    def size(self, port: str, axis: int) -> int | None:
        """The example size (at N = 2) of ``port``'s value along ``axis``."""
        e = self.edges.get(port)
        if e is None or self.shapes is None:
            return None
        r = resolve(self.spec, e)
        value = self.shapes.examples.get(r.src)
        value = getattr(value, r.field) if r.field and value is not None else value
        shape = getattr(value, "shape", None)
        return int(shape[axis]) if shape is not None and -len(shape) <= axis < len(shape) else None

    def p(self, name: str) -> str:
        bs = self.spec.blocks[self.block]
        info = bs.info.params.get(name)
        value = bs.params.get(name, info.default if info is not None else None)
        return format_value(value)

    def own_shape(self) -> str:
        """The size of the block's state as read in the flow (a memory called by its own name)."""
        if self.shapes is not None and self.block in self.shapes.dims:
            return self.shapes.of(self.block)
        return ""


def _shape(*dims: str) -> str:
    return " x ".join(dims)


# -- forward: losses ---------------------------------------------------------------------------------------------
def _info_nce(c: Ctx):
    q, k, queue = c.arg("query"), c.arg("positive"), c.arg("negatives")
    n, big_k = c.d("query", 0, "N"), c.d("negatives", 0, "K")
    return [(f"l_pos = Σ_c {q}·{k}   (one positive per row)", _shape(n, "1")),
            (f"l_neg = {q} · {queue}ᵀ", _shape(n, big_k)),
            (f"logits = [l_pos, l_neg] / T,   T = {c.p('temperature')}", _shape(n, f"(1+{big_k})")),
            ("loss = CE(logits, 0)   (the positive is column 0; mean over N)", "scalar")]


def _dino(c: Ctx):
    sg_, sl, t, center = (c.arg(p) for p in ("student_global", "student_local", "teacher", "center"))
    two, n, k = c.d("teacher", 0, "2"), c.d("teacher", 1, "N"), c.d("teacher", 2, "K")
    v = c.d("student_local", 0, "V")
    locals_ = c.size("student_local", 0)
    pairs = f", 2(V+1) = {2 * (locals_ + 1)} pairs" if locals_ is not None else ""
    return [(f"P_t = softmax(({t} − {center}) / τ_t),   τ_t = {c.p('teacher_temp')}   (teacher, crops i = 1, 2)",
             _shape(two, n, k)),
            (f"s = [{sg_}; {sl}]   (student on the 2 global and {v} local crops)", _shape(f"(2+{v})", n, k)),
            (f"log P_s = log_softmax(s / τ_s),   τ_s = {c.p('student_temp')}", _shape(f"(2+{v})", n, k)),
            ("loss = 1/(2(V+1)) Σ_{i=1,2} Σ_{v≠i} mean_n Σ_k −P_t[i]·log P_s[v]", "scalar" + pairs)]


def _nt_xent(c: Ctx):
    z = c.arg("z")
    n, d = c.d("z", 1, "N"), c.d("z", 2, "D")
    return [(f"h1, h2 = {z}[0] / ‖{z}[0]‖, {z}[1] / ‖{z}[1]‖", _shape(n, d) + " each"),
            ("H1, H2 = gather(h1), gather(h2)   (all processes, with gradient)", _shape(W_N, d) + " each"),
            (f"logits_a = [h1·H2ᵀ, h1·H1ᵀ − 1e9·I] / τ,   τ = {c.p('temperature')}", _shape(n, f"2{W_N}")),
            ("logits_b = [h2·H1ᵀ, h2·H2ᵀ − 1e9·I] / τ", _shape(n, f"2{W_N}")),
            ("loss = CE(logits_a, i) + CE(logits_b, i)   (i: the row's own index in the global batch)", "scalar")]


def _moco_v3(c: Ctx):
    q, k = c.arg("query"), c.arg("key")
    n = c.d("query", 1, "N")
    t = c.p("temperature")
    return [("ctr(a, b) = 2T · CE(â·gather(b̂)ᵀ / T, i)   (â = a/‖a‖; keys gathered without gradient)",
             f"logits {_shape(n, W_N)}"),
            (f"loss = ctr({q}[0], {k}[1]) + ctr({q}[1], {k}[0]),   T = {t}", "scalar")]


def _clip(c: Ctx):
    img, txt, s = c.arg("image"), c.arg("text"), c.arg("logit_scale")
    n = c.d("image", 0, "N")
    bias = " + b" if "logit_bias" in c.edges else ""
    return [(f"x, y = {img}/‖{img}‖, {txt}/‖{txt}‖", _shape(n, c.d("image", 1, "E")) + " each"),
            (f"logits_img = exp({s})·x·gather(y)ᵀ{bias},  logits_txt = exp({s})·y·gather(x)ᵀ{bias}",
             _shape(n, W_N) + " each"),
            ("loss = ½ (CE(logits_img, i) + CE(logits_txt, i))", "scalar")]


def _siglip(c: Ctx):
    img, txt, s, b = (c.arg(p) for p in ("image", "text", "logit_scale", "logit_bias"))
    n = c.d("image", 0, "N")
    return [(f"logits = exp({s})·x·yᵀ + {b}   (x, y: normalised {img}, gathered {txt})", _shape(n, W_N)),
            ("loss = −(1/N) Σ_i Σ_j log σ(z_ij · logits_ij),   z_ij = +1 for a matching pair, −1 otherwise",
             "scalar")]


def _mae(c: Ctx):
    pred, img, mask = c.arg("pred"), c.arg("image"), c.arg("mask")
    n, length, pp = c.d("pred", 0, "N"), c.d("pred", 1, "L"), c.d("pred", 2, "p²·3")
    norm = "(patch − mean) / √(var + ε)" if c.p("norm_pix") == "True" else "patch"
    return [(f"target = {norm} for every patch of {img}", _shape(n, length, pp)),
            (f"e = mean_p ({pred} − target)²", _shape(n, length)),
            (f"loss = Σ {mask}·e / Σ {mask}   (removed patches only)", "scalar")]


def _smooth_l1(c: Ctx):
    pred, target = c.arg("pred"), c.arg("target")
    return [(f"d = {pred} − {target}", " x ".join(c.d("pred", i, "?") for i in range(_rank(c, "pred")))),
            (f"loss = mean(½d²/β if |d| < β else |d| − ½β),   β = {c.p('beta')}", "scalar")]


def _masked_token_ce(c: Ctx):
    logits, ids, index = c.arg("logits"), c.arg("ids"), c.arg("index")
    return [(f"loss = mean over valid masked positions of CE({logits}, {ids}[{index}])", "scalar")]


def _rank(c: Ctx, port: str) -> int:
    e = c.edges.get(port)
    if e is None or c.shapes is None:
        return 0
    r = resolve(c.spec, e)
    dims = c.shapes.tuple(r.src, r.field)
    return len(dims) if dims else 0


def _expression(c: Ctx):
    """An expression block's equation is its program: one line per statement, the last one the result."""
    text = str(c.spec.blocks[c.block].params.get("expr", "")).strip("\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kind = c.spec.blocks[c.block].kind
    return [(line, "") for line in lines[:-1]] + [(f"{'loss' if kind == 'loss.expr' else 'value'} = {lines[-1]}", "")]


FORWARD = {"loss.expr": _expression, "ops.expr": _expression, "loss.info_nce": _info_nce, "loss.dino": _dino, "loss.nt_xent": _nt_xent, "loss.moco_v3": _moco_v3,
           "loss.clip": _clip, "loss.siglip": _siglip, "loss.mae": _mae, "loss.smooth_l1": _smooth_l1,
           "loss.masked_token_ce": _masked_token_ce}


# -- state updates -----------------------------------------------------------------------------------------------
def _ema(c: Ctx):
    source = c.spec.blocks[c.block].source
    return [(f"θ[{c.block}] ← m·θ[{c.block}] + (1 − m)·θ[{source}],   m = {c.p('momentum')}", "parameters only")]


def _queue(c: Ctx):
    keys = c.arg("keys")
    n, dim = c.d("keys", 0, "N"), c.d("keys", -1, "C")
    return [(f"k_all = gather({keys})   (all processes, no gradient)", _shape(f"W·{n}", dim)),
            (f"{c.block}[ptr : ptr + W·{n}] ← k_all;   ptr ← (ptr + W·{n}) mod {c.p('size')}   (oldest keys out)",
             c.own_shape())]


def _center(c: Ctx):
    t = c.arg("teacher")
    k = c.d("teacher", -1, "K")
    return [(f"{c.block} ← m·{c.block} + (1 − m)·Σ_rows {t} / (rows·W),   m = {c.p('momentum')}   "
             "(row sum all-reduced over processes)", c.own_shape() or _shape("1", k))]


def _dino_temp(c: Ctx):
    return [(f"τ_t ← teacher_temp at the next step   ({c.p('teacher_temp')})", "scalar")]


def _clamp(c: Ctx):
    lo, hi = c.p("min"), c.p("max")
    if lo == "None" and hi == "None":
        return [(f"{c.block} unchanged (no bounds)", "scalar")]
    return [(f"{c.block} ← clamp({c.block}, {lo if lo != 'None' else '−∞'}, {hi if hi != 'None' else '∞'})",
             "scalar")]


UPDATE = {"ops.scalar": _clamp, "memory.queue": _queue, "memory.center": _center, "loss.dino": _dino_temp}


def forward_lines(spec: GraphSpec, node: Node, shapes) -> list[tuple[str, str]]:
    info = spec.blocks[node.block].info
    fn = FORWARD.get(info.kind) or getattr(info.cls, "equations", None)
    return list(fn(Ctx(spec, node.block, node, shapes))) if fn else []


def update_lines(spec: GraphSpec, block: str, shapes) -> list[tuple[str, str]]:
    bs = spec.blocks[block]
    fn = _ema if bs.source and bs.info.family == "teacher" else (
        UPDATE.get(bs.kind) or getattr(bs.info.cls, "update_equations", None))
    if fn is not None:
        return fn(Ctx(spec, block, None, shapes, spec.updates.get(block, {})))
    return [(f"{block}.update(step)", f"{bs.kind}: {summary(bs.info.summary, 60)}")]


def structure(spec: GraphSpec, block: str) -> str:
    """A short description of what the block computes: layers of a head, the source of a teacher."""
    bs = spec.blocks[block]
    if bs.kind == "head.mlp":
        dims = list(bs.params.get("dims", []))
        act = "GELU" if bs.params.get("activation") == "gelu" else "ReLU"
        bn = " · BN" if bs.params.get("hidden_norm") == "batch" else ""
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(f"Linear {a}→{b}" + ("" if i == len(dims) - 2 else f"{bn} · {act}"))
        last = bs.params.get("last_norm", "none")
        return " · ".join(layers) + (f" · BN ({last})" if last != "none" else "")
    if bs.source:
        return f"EMA copy of {bs.source}, no gradient"
    return " ".join(bs.info.doc.split("\n\n", 1)[0].split()) or bs.info.summary  # the first paragraph


def summary(text: str, width: int = 0) -> str:
    """A block's one-line summary without its source references; cut at ``width`` characters if given."""
    text = re.sub(r"\s*\([^()]*·[^()]*\)?", "", text.replace("``", "")).strip().rstrip(".")
    return text if not width or len(text) <= width else text[:width - 1].rstrip() + "…"
