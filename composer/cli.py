"""The ``ptc`` command line. Every user mistake ends in one line per error and exit status 2 (``--debug``
shows the traceback)."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from composer.errors import GraphError, GraphErrors

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.run(args) or 0
    except GraphErrors as e:
        for err in e.errors:
            print(err.format(), file=sys.stderr)
        _maybe_trace(args)
        return EXIT_USER_ERROR
    except (GraphError, UserError) as e:
        print(str(e), file=sys.stderr)
        _maybe_trace(args)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class UserError(Exception):
    """A mistake on the command line (bad data spec, missing run folder ...): one line, exit 2."""


def _maybe_trace(args) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptc", description="Self-supervised methods as YAML dataflow graphs.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", help="validate graph files (exit 2 on the first broken file)")
    c.add_argument("graphs", nargs="+")
    _graph_options(c)
    c.add_argument("--no-dry-run", action="store_true", help="skip the shape dry run")
    c.set_defaults(run=cmd_check)

    b = sub.add_parser("blocks", help="list every registered block with its ports, parameters and docs")
    b.add_argument("kind", nargs="?", help="show one block kind in full")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=cmd_blocks)

    s = sub.add_parser("schema", help="print the JSON Schema of graph files")
    s.set_defaults(run=cmd_schema)

    for name, module in _EXTRA_COMMANDS.items():
        mod = __import__(module, fromlist=["add_arguments"])
        sp = sub.add_parser(name, help=mod.__doc__.splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(sp)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks")
        sp.set_defaults(run=mod.run)
    for sp in (c, b, s):
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks")
    return p


# Commands implemented in their own modules (each exposes add_arguments(parser) and run(args)).
_EXTRA_COMMANDS: dict[str, str] = {
    "train": "composer.train_cli",
    "eval": "composer.eval_cli",
    "export": "composer.export",
    "render": "composer.render_cli",
    "explain": "composer.explain_cli",
    "diff": "composer.diff_cli",
    "zeroshot": "composer.zeroshot",
}


def _graph_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a graph value, e.g. --set blocks.queue.size=4096")
    p.add_argument("--variant", help="apply one of the graph's named variants (e.g. tiny)")


def load_and_check(path: str, args, dry_run: bool = True):
    import composer
    spec = composer.load(path, args.overrides, getattr(args, "variant", None))
    report = composer.check(spec, dry_run=dry_run)
    for w in report.warnings:
        print(w, file=sys.stderr)
    return spec, report


def cmd_check(args) -> int:
    status = 0
    for path in args.graphs:
        try:
            load_and_check(path, args, dry_run=not args.no_dry_run)
        except GraphErrors as e:
            for err in e.errors:
                print(err.format(), file=sys.stderr)
            _maybe_trace(args)
            status = EXIT_USER_ERROR
            continue
        except GraphError as e:
            print(e.format(), file=sys.stderr)
            _maybe_trace(args)
            status = EXIT_USER_ERROR
            continue
        print(f"{path}: ok")
    return status


def cmd_blocks(args) -> int:
    from blocks import registry
    kinds = registry.all_blocks()
    if args.kind:
        if args.kind not in kinds:
            raise UserError(f"unknown block type {args.kind!r}{registry.did_you_mean(args.kind, kinds)}")
        kinds = {args.kind: kinds[args.kind]}
    if args.json:
        print(json.dumps({k: _block_json(i) for k, i in kinds.items()}, indent=2))
        return 0
    for kind, info in kinds.items():
        print(f"{kind}  [{info.stage} stage]  {info.summary}")
        ins = ", ".join(p.name + ("" if p.required else "?") for p in info.inputs.values())
        outs = ", ".join(info.outputs) if info.outputs else "tensor"
        print(f"    inputs: {ins or '(none)'}  ->  outputs: {outs}")
        if info.update_inputs or info.has_update:
            print(f"    update(step{''.join(', ' + p for p in info.update_inputs)}) after each optimizer step")
        for p in info.params.values():
            default = "required" if p.required else f"default {p.default!r}"
            print(f"    {p.name}: {_type_name(p.annotation)} ({default})" + (f"  {p.doc}" if p.doc else ""))
        if args.kind:
            print()
            print(info.doc)
    return 0


def _block_json(info) -> dict:
    from composer.schema import params_schema
    return {"stage": info.stage, "summary": info.summary, "inputs": {p.name: {"required": p.required}
            for p in info.inputs.values()}, "outputs": list(info.outputs or ["tensor"]),
            "update_inputs": list(info.update_inputs), "params": params_schema(info)["properties"]}


def _type_name(ann) -> str:
    return getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")


def cmd_schema(args) -> int:
    from composer.schema import graph_schema
    print(json.dumps(graph_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
