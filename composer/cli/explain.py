"""explain a graph as a handout: pseudocode with shapes, state updates, parameters, FLOPs: ptc explain GRAPH"""
from __future__ import annotations

import argparse

from composer.cli.common import graph_options, load_and_check


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph file (YAML)")
    p.add_argument("--code", action="store_true", help="print the compiled torch.fx code of both stages instead")
    p.add_argument("--markdown", action="store_true", help="Markdown (tables, code blocks) instead of plain text")
    p.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (faster)")
    graph_options(p)


def run(args) -> int:
    from composer.draw.explain import compiled_code, explain
    spec, _ = load_and_check(args.graph, args, dry_run=False)  # explain runs its own dry runs
    print(compiled_code(spec) if args.code else explain(spec, flops=not args.no_flops, markdown=args.markdown),
          end="")
    return 0
