"""``loss.expr`` and ``ops.expr``: a loss, or any tensor value, written as an expression in the graph.

    blocks:
      byol_loss:
        type: loss.expr
        expr: mean(2 - 2 * cosine(p[0], z[1])) + mean(2 - 2 * cosine(p[1], z[0]))
    flow:
      loss: {byol_loss: {p: p, z: !sg z}}

The block's input ports are the expression's free names, in order of first use (``p``, ``z`` above); stop a
gradient with ``!sg`` on the edge, as everywhere in a graph. A loss computes in float32 (also under bf16
autocast) and must return a scalar.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from composer.blocks.expr.evaluate import compile_program
from composer.blocks.expr.ops import OPS
from composer.blocks.expr.parse import ExprError, Program, parse
from composer.blocks.registry import Port, block
from composer.runtime.precision import float32_region


class Expression(nn.Module):
    """Shared by the two blocks: parse once, compile to closures, run on the inputs given by name."""

    expression_param = "expr"  # the parameter that holds the program (read by the graph's port lookup)

    def __init__(self, *, expr: str):
        super().__init__()
        self.program: Program = parse(expr, OPS)
        self._run = compile_program(self.program)

    @classmethod
    def input_ports(cls, params: dict) -> dict[str, Port]:
        """The ports of one instance: the free names of its expression (``ExprError`` if it does not parse)."""
        return {name: Port(name, True) for name in parse(params.get(cls.expression_param, ""), OPS).inputs}

    def _evaluate(self, inputs: dict) -> object:
        missing = [n for n in self.program.inputs if n not in inputs]
        if missing:
            raise ValueError(f"{self.kind}: inputs {missing} are not connected")
        first = next((v for v in inputs.values() if isinstance(v, Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
        return self._run({**inputs, "__device__": device})

    def extra_repr(self) -> str:
        return repr(self.program.text)


@block("loss.expr")
class ExpressionLoss(Expression):
    """A loss written as an expression over its inputs (docs/expressions.md), computed in float32.

    Args:
        expr: the program: ``name = expression`` lines, then the scalar result, e.g.
            ``mean(2 - 2 * cosine(p, z))``. Its free names are the block's inputs.
    """

    def forward(self, **inputs: Tensor) -> Tensor:
        first = next(iter(inputs.values()), None)
        device = first.device if isinstance(first, Tensor) else torch.device("cpu")
        with float32_region(device):
            floats = {k: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v
                      for k, v in inputs.items()}
            loss = self._evaluate(floats)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss.expr: the expression must give a scalar, got {shape}; reduce it with mean(...) "
                             "or sum(...)")
        return loss


@block("ops.expr")
class ExpressionOp(Expression):
    """Any tensor value written as an expression over its inputs (docs/expressions.md), e.g. head arithmetic.

    Args:
        expr: the program: ``name = expression`` lines, then the result, e.g. ``normalize(z) / 0.1``.
    """

    def forward(self, **inputs: Tensor) -> Tensor:
        return self._evaluate(inputs)


__all__ = ["ExpressionLoss", "ExpressionOp", "ExprError"]
