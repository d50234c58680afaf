"""draw two graphs in one diagram that highlights their differences: ptc diff A B -o FILE"""
from __future__ import annotations

import argparse
from pathlib import Path

from composer.cli.common import graph_options, load_and_check
from composer.runtime.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from composer.draw.render import FORMATS
    p.add_argument("a", help="the first graph (drawn dashed purple where only it has a part)")
    p.add_argument("b", help="the second graph (green where only it has a part)")
    p.add_argument("-o", "--output", help="output file; its suffix picks the format (default: diff_A_B.svg)")
    p.add_argument("--format", choices=FORMATS, help="output format, overriding the suffix")
    graph_options(p)


def run(args) -> int:
    from composer.draw.diff import diff
    from composer.draw.render import FORMATS, to_dot, write
    a, _ = load_and_check(args.a, args, dry_run=False)
    b, _ = load_and_check(args.b, args, dry_run=False)
    drawing, notes = diff(a, b)
    out = Path(args.output or f"diff_{a.name}_{b.name}.{args.format or 'svg'}")
    fmt = args.format or out.suffix.lstrip(".").lower().replace("gv", "dot")
    if fmt not in FORMATS:
        raise UserError(f"{out}: cannot render to {fmt or 'a file without a suffix'!r}; expected a suffix or "
                        f"--format among {', '.join(FORMATS)}")
    write(to_dot(drawing), out, fmt)
    print("\n".join(notes) if notes else f"{a.name} and {b.name} draw the same")
    print(out)
    return 0
