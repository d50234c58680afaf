"""What the commands share: the graph options (--set, --variant), loading with checks, printing errors."""
from __future__ import annotations

import argparse
import sys
import traceback

from composer.runtime.errors import GraphErrors

EXIT_USER_ERROR = 2


def graph_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a graph value, e.g. --set blocks.queue.size=4096")
    p.add_argument("--variant", help="apply one of the graph's named variants (e.g. tiny)")


def load_and_check(path: str, args, dry_run: bool = True):
    """(spec, report) of a graph file with the command's --set and --variant; warnings go to stderr."""
    from composer.graph import check, load
    spec = load(path, args.overrides, getattr(args, "variant", None))
    report = check(spec, dry_run=dry_run)
    for w in report.warnings:
        print(w, file=sys.stderr)
    return spec, report


def print_errors(error: Exception, args) -> None:
    """One line per error on stderr (the traceback too with --debug)."""
    for err in error.errors if isinstance(error, GraphErrors) else [error]:
        print(err.format() if hasattr(err, "format") else str(err), file=sys.stderr)
    if getattr(args, "debug", False):
        traceback.print_exc()
