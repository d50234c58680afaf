"""A graph explained as a lecture handout: sizes, pseudocode with shapes, variables, blocks, FLOPs.

The pseudocode follows the style of MoCo's Algorithm 1 (He et al. 2020): one line per node of the graph, each
with its tensor shape in symbols (``q: N x C``), the equations inside each loss call (``l_neg: N x K``), the
stop-gradients as ``sg(...)``, the region that runs without gradient as a ``with no_grad():`` block, and the
state updates after the optimizer step. Everything is generated from the graph, its dry run
(``composer.draw.measure.symbolic_shapes``) and its blocks, so it cannot drift from what ``ptc train`` runs.
"""
from __future__ import annotations

import re

from composer.draw import equations, measure
from composer.draw.render import format_value
from composer.graph.compile import assign_stages, execution_order, grad_nodes
from composer.graph.spec import Edge, GraphSpec

CODE_WIDTH = 58  # column where the shape comments start


def explain(spec: GraphSpec, *, flops: bool = True, markdown: bool = False) -> str:
    """The handout of ``spec`` as plain text, or as Markdown (``markdown=True``, used by the gallery)."""
    assign_stages(spec)
    runs = measure.example_runs(spec)
    shapes = measure.symbolic_shapes(spec, runs)
    counts = measure.param_counts(spec)
    cost = measure.count_flops(spec, runs=runs) if flops else None
    n = cost.batch if cost is not None else measure.batch_size(spec)
    doc = _Doc(markdown)
    doc.title(_title(spec))
    doc.section("Sizes", _sizes(spec, shapes, n), table=("symbol", "value", "meaning"))
    doc.section("Algorithm (pseudocode in the style of MoCo's Algorithm 1)", pseudocode(spec, shapes, counts),
                code=True)
    doc.section("Variables", _variables(spec, shapes, n),
                table=("value", "computed by", "shape", f"at N = {n}", "gradient"))
    doc.section("Blocks", _blocks(spec, counts, cost, markdown),
                table=("block", "kind", "what it computes", "trainable", "frozen", "state", "forward FLOPs"))
    if cost is not None:
        doc.section("Cost per training step", _cost(cost))
    return doc.text()


# -- pseudocode ----------------------------------------------------------------------------------------------------
def pseudocode(spec: GraphSpec, shapes, counts: dict | None = None) -> list[str]:
    """Algorithm-1-style lines; ``counts`` (``measure.param_counts``) names the blocks the optimizer updates."""
    assign_stages(spec)
    lines: list[tuple[str, str]] = []  # (code, comment)
    needs = grad_nodes(spec)
    for name, bs in spec.blocks.items():
        if bs.source and bs.params.get("init") == "independent":  # teacher.ema init: independent (BYOL)
            lines.append((f"{name}.params = init({bs.source})", "EMA teacher: its own random initialisation, "
                          "never gets gradient"))
        elif bs.source:
            lines.append((f"{name}.params = {bs.source}.params", "EMA teacher: starts as a copy, never gets gradient"))
    inputs = ", ".join(spec.inputs)
    lines.append((f"for step, {'(' + inputs + ')' if len(spec.inputs) > 1 else inputs} in enumerate(loader):",
                  "this process's N samples; W·N over all processes"))
    data = [n for n in execution_order(spec, [n for n in spec.nodes if spec.nodes[n].stage == "data"])
            if spec.nodes[n].kind != "input"]
    model = execution_order(spec, [n for n in spec.nodes if spec.nodes[n].stage == "model"])
    if data:
        lines.append(("    # data stage: in the DataLoader workers", ""))
        lines += [_line(spec, n, shapes, "    ") for n in data]
    lines.append(("    # model stage: on the device", ""))
    no_grad = [n for n in model if n not in needs]
    if no_grad:
        lines.append(("    with no_grad():", "no gradient reaches these values"))
    for name in model:
        indent = "        " if name in no_grad else "    "
        lines.append(_line(spec, name, shapes, indent))
        node = spec.nodes[name]
        if node.kind == "call":
            lines += [(f"{indent}    # {eq}", size) for eq, size in equations.forward_lines(spec, node, shapes)]
    terms = [(f"{w:g}·" if w != 1 else "") + v for v, w in spec.objective.items()]
    lines.append((f"    L = {' + '.join(terms)}", "the objective"))
    counts = measure.param_counts(spec) if counts is None else counts
    trainable = [b for b in spec.blocks if b in counts and counts[b].trainable]
    lines.append(("    L.backward(); optimizer.step()", "updates " + (", ".join(trainable) or "no parameters")))
    stateful = [b for b, bs in spec.blocks.items() if bs.info.has_update]
    if stateful:
        lines.append(("    # state updates: after the optimizer step, under no_grad, in graph order", ""))
        for block in stateful:
            for eq, size in equations.update_lines(spec, block, shapes):
                lines.append((f"    {eq}", size))
    return _align(lines)


def _line(spec: GraphSpec, name: str, shapes, indent: str) -> tuple[str, str]:
    node = spec.nodes[name]
    if node.kind == "alias":
        code = f"{name} = {_arg(spec, node.inputs['value'])}"
    else:
        bs = spec.blocks[node.block]
        ports = list(spec.ports(node.block))
        if not node.inputs:
            code = f"{name} = {node.block}.read()" if bs.info.family == "memory" else f"{name} = {node.block}()"
        elif len(ports) == 1:
            code = f"{name} = {node.block}({_arg(spec, node.inputs[ports[0]])})"
        else:
            code = f"{name} = {node.block}(" + ", ".join(f"{p}={_arg(spec, e)}" for p, e in node.inputs.items()) + ")"
    dims = shapes.dims.get(name) if shapes is not None else None
    if isinstance(dims, dict):
        comment = ", ".join(f"{name}.{f}: {shapes.of(name, f)}" for f in dims)
    else:
        comment = f"{name}: {shapes.of(name)}" if dims is not None else ""
    return indent + code, comment


def _arg(spec: GraphSpec, edge: Edge) -> str:
    text = edge.src + (f".{edge.field}" if edge.field else "")
    return f"sg({text})" if edge.sg else text


def _align(lines: list[tuple[str, str]]) -> list[str]:
    out = []
    for code, comment in lines:
        if not comment:
            out.append(code)
        elif code.lstrip().startswith("#"):
            out.append(f"{code.ljust(CODE_WIDTH + 12)}  [{comment}]" if len(code) < CODE_WIDTH + 12
                       else f"{code}  [{comment}]")
        else:
            out.append(f"{code.ljust(CODE_WIDTH)}  # {comment}")
    return out


# -- tables --------------------------------------------------------------------------------------------------------
def _sizes(spec: GraphSpec, shapes, n: int) -> list[tuple]:
    # The shapes are one process's (gathers read W·N), the values those of a single process (W = 1) with
    # accumulate 1, whose N is the whole train.batch_size: the global batch per optimizer step.
    rows = [("N", str(n), "samples one process holds in a forward, train.batch_size / (W·accumulate); "
                          "values shown for W = 1, accumulate 1")]
    for s in shapes.symbols.values():
        rows.append((s.name, str(s.value), f"{s.doc} ({s.where})"))
    rows.append(("W", "—", "number of processes; W·N is the global batch (train.batch_size) when accumulate is 1"))
    if shapes.varies:
        rows.append(("d*", "—", "a size that changes from batch to batch (its value on an example batch)"))
    return rows


def numeric(dims: str, symbols: dict, n: int) -> str:
    """``"N x C"`` → ``"256 x 128"``: the symbols replaced by their values at batch ``n``."""
    def one(d: str) -> str:
        m = re.fullmatch(r"(\d*)N", d)
        if m:
            return str(int(m.group(1) or 1) * n)
        return str(symbols[d].value) if d in symbols else d
    return re.sub(r"[A-Za-z0-9*]+", lambda m: one(m.group(0)) if m.group(0) != "x" else "x", dims)


def _variables(spec: GraphSpec, shapes, n: int) -> list[tuple]:
    rows = []
    needs = grad_nodes(spec)
    for name, node in spec.nodes.items():
        if node.kind == "input" or name not in shapes.dims:
            continue
        by = spec.blocks[node.block].kind if node.kind == "call" else f"alias of {_arg(spec, node.inputs['value'])}"
        d = shapes.dims[name]
        parts = [(f"{name}.{f}", shapes.of(name, f)) for f in d] if isinstance(d, dict) else [(name, shapes.of(name))]
        grad = "data" if node.stage == "data" else ("yes" if name in needs else "no")
        for label, text in parts:
            rows.append((label, by, text, numeric(text, shapes.symbols, n), grad))
    return rows


def _blocks(spec: GraphSpec, counts: dict, cost, doc_md: bool) -> list[tuple]:
    rows = []
    total = [0, 0, 0]
    for name, bs in spec.blocks.items():
        c = counts.get(name, measure.Counts(0, 0, 0))
        total = [total[0] + c.trainable, total[1] + c.frozen, total[2] + c.buffers]
        what = equations.structure(spec, name)
        what = equations.summary(what, 0 if doc_md else 60) if not bs.source and bs.kind != "head.mlp" else what
        params = ", ".join(f"{p}={format_value(v)}" for p, v in bs.params.items() if v != bs.source)
        flops = measure.human(cost.per_block[name]) if cost is not None and name in cost.per_block else "—"
        rows.append((name, bs.kind, what + (f" ({params})" if params else ""), _n(c.trainable), _n(c.frozen),
                     _n(c.buffers), flops))
    rows.append(("total", "", "", _n(total[0]), _n(total[1]), _n(total[2]),
                 measure.human(cost.forward) if cost is not None else "—"))
    return rows


def _n(x: int) -> str:
    return measure.human(x) if x else "—"


def _cost(cost) -> list[str]:
    where = (f"at N = {cost.batch} = train.batch_size, the whole global batch in one process (W = 1; W processes "
             f"share this work, each running train.batch_size / W samples), counted on the meta device (shapes only, "
             f"nothing allocated)"
             if cost.where == "meta" else
             f"at the example batch N = {cost.batch}, counted on the CPU (a block has no meta kernel)")
    return [f"forward: {_flop(cost.forward)}", f"backward: {_flop(cost.backward)}", f"step: {_flop(cost.step)}",
            f"{where}; the data stage is not counted; a multiply-add counts as 2 FLOPs (torch.utils.flop_counter)"]


def _flop(x: int) -> str:
    """``8.33 TFLOP``."""
    h = measure.human(x)
    return f"{h[:-1]} {h[-1]}FLOP" if h[-1].isalpha() else f"{h} FLOP"


def _title(spec: GraphSpec) -> str:
    paper = spec.data.get("paper") or {}
    text = spec.name
    if isinstance(paper, dict) and paper.get("title"):
        text += f": {paper['title']}" + (f" (arXiv:{paper['arxiv']})" if paper.get("arxiv") else "")
    return text


# -- output --------------------------------------------------------------------------------------------------------
class _Doc:
    """Plain text (headings underlined, aligned columns) or Markdown (headings, tables, code blocks)."""

    def __init__(self, markdown: bool):
        self.md = markdown
        self.parts: list[str] = []

    def title(self, text: str) -> None:
        self.parts.append(f"# {text}" if self.md else f"{text}\n{'=' * len(text)}")

    def section(self, heading: str, body, table: tuple | None = None, code: bool = False) -> None:
        head = f"## {heading}" if self.md else f"{heading}\n{'-' * len(heading)}"
        if table:
            text = self._table(table, body)
        elif code:
            text = ("```python\n" + "\n".join(body) + "\n```") if self.md else "\n".join(body)
        else:
            text = "\n".join(f"- {b}" for b in body) if self.md else "\n".join(body)
        self.parts.append(f"{head}\n\n{text}")

    def _table(self, header: tuple, rows: list[tuple]) -> str:
        if self.md:
            cells = lambda r: "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"  # noqa: E731
            return "\n".join([cells(header), "|" + "---|" * len(header)] + [cells(r) for r in rows])
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])

    def text(self) -> str:
        return "\n\n".join(self.parts) + "\n"


def compiled_code(spec: GraphSpec) -> str:
    """The generated fx code of both stages (``ptc explain --code``), built without allocating weights."""
    from composer.graph import build
    try:
        return build(spec, device="meta", check=False).code
    except Exception:  # a block that cannot be built on meta: build it for real
        return build(spec, check=False).code
