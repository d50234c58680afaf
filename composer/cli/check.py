"""check graph files: static checks and a shape dry run; one line per error, exit 2: ptc check GRAPH..."""
from __future__ import annotations

import argparse

from composer.cli.common import EXIT_USER_ERROR, graph_options, load_and_check, print_errors
from composer.runtime.errors import GraphError, GraphErrors


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graphs", nargs="+")
    graph_options(p)
    p.add_argument("--no-dry-run", action="store_true", help="skip the shape dry run")


def run(args) -> int:
    status = 0
    for path in args.graphs:
        try:
            load_and_check(path, args, dry_run=not args.no_dry_run)
        except (GraphErrors, GraphError) as e:
            print_errors(e, args)
            status = EXIT_USER_ERROR
            continue
        print(f"{path}: ok")
    return status
