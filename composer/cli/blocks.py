"""list every registered block with its ports, parameters and docs: ptc blocks [KIND] [--json]"""
from __future__ import annotations

import argparse
import json

from composer.blocks import registry
from composer.graph.schema import params_schema
from composer.runtime.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", help="show one block kind in full")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
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
    return {"stage": info.stage, "summary": info.summary, "inputs": {p.name: {"required": p.required}
            for p in info.inputs.values()}, "outputs": list(info.outputs or ["tensor"]),
            "update_inputs": list(info.update_inputs), "params": params_schema(info)["properties"]}


def _type_name(ann) -> str:
    return getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")
