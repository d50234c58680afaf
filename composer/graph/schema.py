"""JSON Schema of graph files, generated from the block registry (``ptc schema``).

Editors use it to autocomplete and validate graph files; ``ptc check`` validates every block's parameters with
it (through ``jsonschema``) so a wrong type is reported at the parameter's line.
"""
from __future__ import annotations

import types
import typing

import jsonschema

from composer.blocks import registry
from composer.runtime import schedules
from composer.runtime.errors import GraphError

_SCALARS = {int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"}, str: {"type": "string"}}
_EXPR = {"description": "a value name, '!sg name' (stop-gradient), or {block: inputs}",
         "anyOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}]}


def annotation_schema(ann) -> dict:
    """JSON Schema of a parameter annotation (int, float, list[int], Literal[...], Schedule, X | None ...)."""
    if ann in _SCALARS:
        return dict(_SCALARS[ann])
    if ann is registry.BlockRef:
        return {"type": "string", "description": "the name of another block"}
    if ann is schedules.Schedule:
        return schedules.JSON_SCHEMA
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [annotation_schema(a) if a is not type(None) else {"type": "null"} for a in args]}
    if origin in (list, tuple) or ann in (list, tuple):
        out: dict = {"type": "array"}
        if origin is tuple and args and args[-1] is not Ellipsis:
            out.update(prefixItems=[annotation_schema(a) for a in args], minItems=len(args), maxItems=len(args))
        elif args:
            out["items"] = annotation_schema(args[0])
        return out
    if origin is dict or ann is dict:
        return {"type": "object"}
    return {}


def params_schema(info: registry.BlockInfo) -> dict:
    props = {"type": {"const": info.kind}}
    for p in info.params.values():
        s = _with_range(annotation_schema(p.annotation), p.range.json_schema())
        if p.doc:
            s["description"] = p.doc
        if not p.required and _jsonable(p.default):
            s["default"] = list(p.default) if isinstance(p.default, tuple) else p.default
        props[p.name] = s
    return {"type": "object", "properties": props, "additionalProperties": False,
            "required": ["type"] + [p.name for p in info.params.values() if p.required]}


def graph_schema() -> dict:
    from composer.graph.train_schema import train_schema
    kinds = registry.all_blocks()
    block_schema = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": list(kinds), "description": "the block kind (see 'ptc blocks')"}},
        "allOf": [{"if": {"properties": {"type": {"const": k}}}, "then": params_schema(i)} for k, i in kinds.items()],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pretext-composer graph",
        "type": "object",
        "required": ["blocks", "flow"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "paper": {"type": "object"},
            "sources": {"type": ["object", "array", "string"]},
            "notes": {"type": ["string", "array"]},
            "extends": {"type": "string"},
            "data": {"type": "string", "description": "default data spec, e.g. shapes"},
            "inputs": {"type": "array", "items": {"type": "string"}},
            "blocks": {"type": "object", "additionalProperties": block_schema},
            "flow": {"type": "object", "additionalProperties": _EXPR},
            "updates": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": _EXPR}},
            "objective": {"anyOf": [{"type": "string"}, {"type": "object", "additionalProperties": {"anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "object", "required": ["weight"], "additionalProperties": False,
                 "properties": {"weight": {"type": "number"}, "allow_negative": {"type": "boolean"}}}]}}]},
            "embedding": {"type": "string"},
            "train": train_schema(),
            "requires": {"type": "array", "items": {"type": "string"},
                         "description": "plugin packages the graph needs (pip names, optionally with a version)"},
            "guards": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "{LOSS_BLOCK: REASON}: a loss that is its own guard against collapse"},
            "variants": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    }


def check_params(blocks: dict, located) -> list[GraphError]:
    """Validate each block's parameter values against its schema; errors point at the parameter's line."""
    errors = []
    for name, block in blocks.items():
        validator = jsonschema.Draft202012Validator(params_schema(block.info))
        body = {"type": block.kind, **{k: _plain(v) for k, v in block.params.items() if k in block.info.params}}
        for e in sorted(validator.iter_errors(body), key=lambda e: list(e.path)):
            if e.validator == "additionalProperties" or (e.validator == "required"):
                continue  # reported by the parser with a "did you mean"
            if e.validator in _RANGE_KEYWORDS:
                continue  # reported by composer.graph.ranges, with the range in words
            if any(e.validator in _RANGE_KEYWORDS for e in (e.context or ())) and _numbers_only(e.instance):
                continue  # an anyOf failing only on a bound (dims: [0, 64]): the same
            param = e.path[0] if e.path else None
            where = ("blocks", name) + ((param,) if param else ())
            expected = _expected(block.info.params[param].annotation) if param in block.info.params else None
            errors.append(GraphError(f"parameter {param!r} of {block.kind}: {e.message}", located.loc(*where),
                                     node=name, expected=expected))
    return errors


_RANGE_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _with_range(schema: dict, bounds: dict) -> dict:
    """``schema`` with the range keywords added to every number or integer it admits (not inside schedules)."""
    if not bounds or schema is schedules.JSON_SCHEMA:
        return dict(schema)
    out = dict(schema)
    if out.get("type") in ("number", "integer"):
        out.update(bounds)
    for key in ("items",):
        if isinstance(out.get(key), dict):
            out[key] = _with_range(out[key], bounds)
    for key in ("prefixItems", "anyOf"):
        if isinstance(out.get(key), list):
            out[key] = [_with_range(s, bounds) for s in out[key]]
    return out


def _numbers_only(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_numbers_only(x) for x in v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _expected(ann) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if ann in names:
        return names[ann]
    if ann is schedules.Schedule:
        return "a number or a schedule such as {cosine: [0.996, 1.0]}"
    return f"a value of type {getattr(ann, '__name__', None) or str(ann).replace('typing.', '')}"


def _plain(v):
    from composer.graph.loader import SG
    if isinstance(v, SG):
        return {"!sg": _plain(v.value)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_jsonable(x) for x in v))
