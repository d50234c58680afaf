"""Losses and head arithmetic written as expressions in the graph file (``loss.expr``, ``ops.expr``).

    parse (a whitelisted subset of Python's expression syntax, read by ``ast``; nothing is evaluated)
    → a program of assignments ending in one result expression, its free names are the block's input ports
    → compiled once into nested closures over the operation table (ops.py), run on each forward

See docs/expressions.md for the language and the operation table.
"""

from composer.blocks.expr import block  # noqa: E402,F401  (registers loss.expr and ops.expr)
