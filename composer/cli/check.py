"""check graph files: static checks and a shape dry run of the graph and of every variant; one line per error,
exit 2: ptc check GRAPH...

Without ``--variant`` each file is checked as written and then once per entry of its ``variants:`` (after
``extends:``), so a typo inside ``variants.tiny`` fails ``ptc check`` too; an error of a variant names it.
"""
from __future__ import annotations

import argparse
import sys

from composer.cli.common import EXIT_USER_ERROR, graph_options, print_errors
from composer.runtime.errors import GraphError, GraphErrors


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graphs", nargs="+")
    graph_options(p)
    p.add_argument("--no-dry-run", action="store_true", help="skip the shape dry run")
    p.add_argument("--no-variants", action="store_true", help="check the graph as written only, not its variants")


def run(args) -> int:
    status = 0
    for path in args.graphs:
        checked, failed, warnings = [], False, []
        for variant in _variants(path, args):
            try:
                _check_one(path, args, variant, warnings)
            except (GraphErrors, GraphError) as e:
                print_errors(_name_variant(e, variant), args)
                failed = True
                if variant is None and args.variant is None:
                    break  # the base is broken: its variants would repeat the same errors
                continue
            checked.append(variant)
        for w in dict.fromkeys(warnings):  # once each, however many variants repeat it
            print(w, file=sys.stderr)
        if failed:
            status = EXIT_USER_ERROR
        else:
            names = [v for v in checked if v is not None]
            print(f"{path}: ok" + (f" (and variants {', '.join(names)})" if names and args.variant is None else ""))
    return status


def _variants(path: str, args) -> list[str | None]:
    """``[--variant]`` when given; else the base (None) followed by every variant of the file."""
    if args.variant is not None:
        return [args.variant]
    if args.no_variants:
        return [None]
    from composer.graph.loader import load_located
    try:
        variants = load_located(path).data.get("variants")
    except (GraphErrors, GraphError, OSError, ValueError):
        return [None]  # the base check reports it
    return [None] + (list(variants) if isinstance(variants, dict) else [])


def _check_one(path: str, args, variant: str | None, warnings: list[str]) -> None:
    from composer.graph import check, load
    spec = load(path, args.overrides, variant)
    warnings += check(spec, dry_run=not args.no_dry_run).warnings


def _name_variant(error: Exception, variant: str | None) -> Exception:
    """The same errors with ``variant 'tiny': `` in front of each message (nothing for the base graph)."""
    if variant is None:
        return error
    errors = error.errors if isinstance(error, GraphErrors) else [error]
    return GraphErrors([GraphError(f"variant {variant!r}: " + (f"node '{e.node}': " if e.node else "") + e.message,
                                   e.loc, None, e.expected) for e in errors])
