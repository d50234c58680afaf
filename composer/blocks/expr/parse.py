"""Reading an expression program: Python's own parser (``ast``), then a whitelist of node kinds.

A program is one or more lines; each line but the last is an assignment ``name = expression``, the last line is
the result. Nothing is executed while parsing: ``ast.parse`` only builds a tree, and every node kind, operator and
function name is checked against the lists below before anything runs. Allowed:

    numbers (1, 0.5, 1e-9), true/false as True/False, strings only as einsum's first argument
    names: inputs (the block's ports, in order of first use) and names assigned on an earlier line
    x + y, x - y, x * y, x / y, x ** y, x @ y, -x, +x
    f(a, b, key=value) for f in the operation table;  x[i], x[a:b], x[:, 0], x[0, :, None]
"""
from __future__ import annotations

import ast
import dataclasses

BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.MatMult: "@"}
UNARY = {ast.USub: "-", ast.UAdd: "+"}


class ExprError(ValueError):
    """A mistake in an expression, at ``line`` (1-based, inside the expression) and ``col`` (1-based)."""

    def __init__(self, message: str, line: int = 1, col: int = 1):
        self.message, self.line, self.col = message, line, col
        super().__init__(f"col {col}: {message}" if line == 1 else f"line {line}, col {col}: {message}")


@dataclasses.dataclass(frozen=True)
class Program:
    """A parsed program: ``(name, tree)`` assignments, the result tree and the free names (the inputs)."""

    text: str
    assignments: tuple[tuple[str, ast.expr], ...]
    result: ast.expr
    inputs: tuple[str, ...]


def parse(text: str, functions) -> Program:
    """Parse and check ``text`` against the operation names ``functions``; ``ExprError`` on the first mistake."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("the expression is empty")
    try:
        tree = ast.parse(text.strip("\n"), mode="exec")
    except SyntaxError as e:
        raise ExprError(f"syntax error: {e.msg}", e.lineno or 1, e.offset or 1) from None
    if not tree.body:
        raise ExprError("the expression is empty")
    assigned: list[str] = []
    inputs: list[str] = []
    assignments = []
    for i, statement in enumerate(tree.body):
        last = i == len(tree.body) - 1
        if isinstance(statement, ast.Assign) and not last:
            if len(statement.targets) != 1 or not isinstance(statement.targets[0], ast.Name):
                raise _at(statement, "assign to one plain name: 'name = expression'")
            name = statement.targets[0].id
            if name in functions:
                raise _at(statement, f"{name!r} is an operation; pick another name")
            _check(statement.value, functions, assigned, inputs)
            assigned.append(name)
            assignments.append((name, statement.value))
        elif isinstance(statement, ast.Expr) and last:
            _check(statement.value, functions, assigned, inputs)
        else:
            raise _at(statement, "the last line must be the result expression" if last
                      else "every line but the last must be 'name = expression'")
    return Program(text, tuple(assignments), tree.body[-1].value, tuple(inputs))


def _at(node: ast.AST, message: str) -> ExprError:
    return ExprError(message, getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1)


def _check(node: ast.AST, functions, assigned: list[str], inputs: list[str]) -> None:
    """Walk ``node``: only whitelisted kinds; record free names as inputs in order of first use."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or isinstance(node.value, (int, float)) and not isinstance(node.value, complex):
            return
        raise _at(node, f"constant {node.value!r} is not a number")
    if isinstance(node, ast.Name):
        if node.id in functions:
            raise _at(node, f"{node.id!r} is an operation: call it, {node.id}(...)")
        if node.id not in assigned and node.id not in inputs:
            inputs.append(node.id)
        return
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        _check(node.left, functions, assigned, inputs)
        _check(node.right, functions, assigned, inputs)
        return
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        _check(node.operand, functions, assigned, inputs)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in functions:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise _at(node, f"unknown operation {name!r}{_did_you_mean(name, functions)}")
        args = list(node.args)
        if node.func.id == "einsum" and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            args = args[1:]  # the subscripts string
        for a in args:
            if isinstance(a, ast.Starred):
                raise _at(a, "'*' arguments are not allowed")
            _check(a, functions, assigned, inputs)
        for k in node.keywords:
            if k.arg is None:
                raise _at(k.value, "'**' arguments are not allowed")
            _check(k.value, functions, assigned, inputs)
        return
    if isinstance(node, ast.Subscript):
        _check(node.value, functions, assigned, inputs)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for item in items:
            parts = [item.lower, item.upper, item.step] if isinstance(item, ast.Slice) else [item]
            for p in parts:
                if p is not None and not (isinstance(p, ast.Constant) and p.value is None):
                    _check(p, functions, assigned, inputs)
        return
    if isinstance(node, ast.Tuple):
        raise _at(node, "a tuple is not a value here")
    raise _at(node, f"{type(node).__name__} is not part of the expression language "
                    "(numbers, names, + - * / ** @, calls of listed operations, indexing)")


def _did_you_mean(word: str, choices) -> str:
    import difflib
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
