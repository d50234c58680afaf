"""A parsed program compiled once into nested closures ``env → value``; running it is one call per node.

Compiling ahead of time keeps the forward a plain sequence of torch calls: fast in eager mode, and
``torch.compile`` traces it into one graph (no Python is left to interpret but the closures themselves).
Arity and keyword names are checked here, before anything runs, against each operation's Python signature.
"""
from __future__ import annotations

import ast
import inspect
import operator
from collections.abc import Callable

from composer.blocks.expr.ops import OPS
from composer.blocks.expr.parse import BINARY, UNARY, ExprError, Program

Env = dict
_BINARY_FN = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
              "**": operator.pow, "@": operator.matmul}
_UNARY_FN = {"-": operator.neg, "+": operator.pos}


def compile_program(program: Program) -> Callable[[Env], object]:
    """``run(env)`` for ``env`` = {input name: tensor, '__device__': device}; returns the result's value."""
    steps = [(name, _node(tree)) for name, tree in program.assignments]
    result = _node(program.result)

    def run(env: Env):
        env = dict(env)
        for name, fn in steps:
            env[name] = fn(env)
        return result(env)
    return run


def _node(node: ast.expr) -> Callable[[Env], object]:
    if isinstance(node, ast.Constant):
        value = node.value
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id
        return lambda env: env[name]
    if isinstance(node, ast.BinOp):
        fn, left, right = _BINARY_FN[BINARY[type(node.op)]], _node(node.left), _node(node.right)
        return lambda env: fn(left(env), right(env))
    if isinstance(node, ast.UnaryOp):
        fn, operand = _UNARY_FN[UNARY[type(node.op)]], _node(node.operand)
        return lambda env: fn(operand(env))
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, ast.Subscript):
        value = _node(node.value)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        parts = [_index(i) for i in items]
        if len(parts) == 1:
            only = parts[0]
            return lambda env: value(env)[only(env)]
        return lambda env: value(env)[tuple(p(env) for p in parts)]
    raise ExprError(f"cannot compile {type(node).__name__}", node.lineno, node.col_offset + 1)  # parse() rejects it


def _index(item: ast.expr) -> Callable[[Env], object]:
    if isinstance(item, ast.Slice):
        lo, hi, step = (_node(p) if p is not None else (lambda env: None) for p in (item.lower, item.upper, item.step))
        return lambda env: slice(lo(env), hi(env), step(env))
    return _node(item)


def _call(node: ast.Call) -> Callable[[Env], object]:
    spec = OPS[node.func.id]
    first_string = node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    args = [(lambda env, v=node.args[0].value: v)] if first_string else []
    args += [_node(a) for a in node.args[1 if first_string else 0:]]
    kwargs = {k.arg: _node(k.value) for k in node.keywords}
    try:
        inspect.signature(spec.fn).bind(*range(len(args)), **dict.fromkeys(kwargs))
    except TypeError as e:
        raise ExprError(f"{spec.signature}: {e}", node.lineno, node.col_offset + 1) from None
    fn, device = spec.fn, spec.device
    if device:
        return lambda env: fn(*(a(env) for a in args), device=env["__device__"],
                              **{k: v(env) for k, v in kwargs.items()})
    return lambda env: fn(*(a(env) for a in args), **{k: v(env) for k, v in kwargs.items()})
