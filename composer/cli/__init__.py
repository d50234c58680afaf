"""The ``ptc`` command line: one module per command, each with ``add_arguments(parser)`` and ``run(args)``.

Every user mistake, and every file-system error (a full disk, a read-only or missing folder), ends in one line
per error naming the path, and exit status 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from composer.cli.common import EXIT_USER_ERROR, print_errors
from composer.runtime.errors import GraphError, GraphErrors, UserError, os_error_line

# command → module under composer.cli; the first line of the module's docstring is its help
COMMANDS = ("check", "blocks", "schema", "train", "eval", "export", "render", "explain", "diff", "zeroshot", "shards")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.run(args) or 0
    except (GraphErrors, GraphError, UserError) as e:
        print_errors(e, args)
        return EXIT_USER_ERROR
    except OSError as e:  # a file-system error no command explained: still one line with the path
        print_errors(UserError(os_error_line(e)), args)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ptc blocks | head`: the reader left early, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # silence the flush at exit
        return 141


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptc", description="Self-supervised methods as YAML dataflow graphs.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"composer.cli.{name}")
        sp = sub.add_parser(name, help=module.__doc__.splitlines()[0])
        module.add_arguments(sp)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks")
        sp.set_defaults(run=module.run)
    return p


if __name__ == "__main__":
    sys.exit(main())
