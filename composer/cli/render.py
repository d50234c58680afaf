"""draw a graph's architecture diagram (graphviz): ptc render GRAPH -o FILE.{svg,png,pdf,dot}"""
from __future__ import annotations

import argparse
from pathlib import Path

from composer.cli.common import graph_options, load_and_check
from composer.runtime.errors import UserError, os_error_line


def add_arguments(p: argparse.ArgumentParser) -> None:
    from composer.draw.render import FORMATS
    p.add_argument("graph", help="the graph file (YAML)")
    p.add_argument("-o", "--output", help="output file; its suffix picks the format (default: NAME.svg here)")
    p.add_argument("--format", choices=FORMATS, help="output format, overriding the suffix")
    p.add_argument("--shapes", action="store_true",
                   help="label the edges with tensor shapes from the dry run (N x C ...)")
    p.add_argument("--no-legend", action="store_true", help="leave out the key under the title")
    graph_options(p)


def run(args) -> int:
    from composer.draw.render import FORMATS, render
    spec, _ = load_and_check(args.graph, args, dry_run=False)  # --shapes runs its own dry runs
    out = Path(args.output or f"{spec.name}.{args.format or 'svg'}")
    fmt = args.format or out.suffix.lstrip(".").lower().replace("gv", "dot")
    if fmt not in FORMATS:
        raise UserError(f"{out}: cannot render to {fmt or 'a file without a suffix'!r}; expected a suffix or "
                        f"--format among {', '.join(FORMATS)}")
    shapes = None
    if args.shapes:
        from composer.draw.measure import symbolic_shapes
        shapes = symbolic_shapes(spec)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; expected the path of the diagram to write")
    try:
        render(spec, out, fmt, shapes=shapes, legend=not args.no_legend)
    except OSError as e:  # a read-only folder, a path under a file, a full disk: one line naming the output
        raise UserError(os_error_line(e, out, "cannot write the diagram")) from None
    print(out)
    return 0
