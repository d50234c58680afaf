"""Read graph files: safe YAML plus the ``!sg`` tag, ``extends:``, variants and ``--set`` overrides.

Every value keeps the file and line it came from (``Located.locs`` maps a key path such as
``("blocks", "queue", "size")`` to a ``Loc``), so later stages can point at the exact line of a mistake.

Safety: only YAML's core tags and ``!sg`` are accepted (``!!python/object`` and friends are errors), aliases are
bounded (a billion-laughs file stops after ``MAX_NODES`` expanded values), duplicate keys are errors, and empty or
binary files get a clear message.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import yaml

from composer.runtime.errors import GraphError, Loc

SG_TAG = "!sg"
MAX_NODES = 20_000  # expanded values per file: real graphs have a few hundred
MAX_ALIASES = 100
MAX_BYTES = 1 << 20
MAX_DEPTH = 64  # nesting levels: real graphs use under 10; deeper input would exhaust Python's recursion limit
MAX_DIGITS = 64  # characters of one number: more is a typo (and int() refuses beyond 4300 digits)
_CORE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}


@dataclasses.dataclass
class SG:
    """A stop-gradient edge: ``!sg value`` in YAML."""

    value: object

    def __repr__(self) -> str:
        return f"!sg {self.value!r}"


@dataclasses.dataclass
class Located:
    """Plain data (dicts, lists, scalars, ``SG``) plus the location of every key path."""

    data: object
    locs: dict[tuple, Loc]

    def loc(self, *path) -> Loc | None:
        """The location of ``path`` or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.locs:
                return self.locs[path]
            path = path[:-1]
        return self.locs.get(())


class _Loader(yaml.SafeLoader):
    """Composes nodes only; values are constructed by ``_Builder`` so that tags and locations are controlled."""


def parse_text(text: str, filename: str) -> Located:
    """Parse one YAML document into ``Located`` data. Raises ``GraphError`` with the file and line."""
    if not text.strip():
        raise GraphError("the file is empty", Loc(filename, 1), expected="a YAML mapping with 'blocks' and 'flow'")
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        what = (e.problem or "invalid YAML").strip()
        raise GraphError(f"invalid YAML: {what}", Loc(filename, line), expected="well-formed YAML") from None
    except yaml.reader.ReaderError as e:  # a control character: point at its line
        line = text[: e.position].count("\n") + 1
        raise GraphError(f"invalid YAML: character {e.character!r} is not allowed", Loc(filename, line),
                         expected="printable text") from None
    except yaml.YAMLError as e:
        raise GraphError(f"invalid YAML: {str(e).splitlines()[0]}", Loc(filename, 1)) from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise GraphError("the YAML is nested too deeply", Loc(filename, 1),
                         expected=f"at most {MAX_DEPTH} nested levels") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise GraphError("the file is empty", Loc(filename, 1), expected="a YAML mapping with 'blocks' and 'flow'")
    builder = _Builder(filename)
    data = builder.build(node, ())
    if not isinstance(data, dict):
        raise GraphError(f"the top level is a {type(data).__name__}", Loc(filename, node.start_mark.line + 1),
                         expected="a mapping with 'blocks' and 'flow'")
    return Located(data, builder.locs)


class _Builder:
    def __init__(self, filename: str):
        self.filename = filename
        self.locs: dict[tuple, Loc] = {}
        self.count = 0
        self.aliases = 0
        self.seen: set[int] = set()
        self.constructor = yaml.SafeLoader("")  # only its scalar constructors are used

    def build(self, node, path: tuple):
        self.count += 1
        line = node.start_mark.line + 1
        if self.count > MAX_NODES:
            raise GraphError(f"more than {MAX_NODES} values after expanding aliases (an alias bomb?)",
                             Loc(self.filename, line), expected="a graph of at most a few thousand values")
        if id(node) in self.seen:  # an alias: the same node object reached again
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise GraphError(f"more than {MAX_ALIASES} alias uses", Loc(self.filename, line),
                                 expected="few anchors and aliases")
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self.seen.add(id(node))
        if len(path) > MAX_DEPTH:
            raise GraphError("the YAML is nested too deeply", Loc(self.filename, line),
                             expected=f"at most {MAX_DEPTH} nested levels")
        self.locs[path] = Loc(self.filename, line)
        tag = node.tag
        if tag == SG_TAG:
            inner = copy.copy(node)
            inner.tag = self._default_tag(node)
            return SG(self.build(inner, path))
        if tag not in _CORE_TAGS:
            raise GraphError(f"the tag {tag!r} is not allowed", Loc(self.filename, line),
                             expected="plain YAML values and the !sg stop-gradient tag")
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise GraphError("YAML merge keys (<<) are not supported", Loc(self.filename, line),
                                     expected="'extends:' to build on another graph")
                key = self.build(key_node, path + ("<key>",))
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    raise GraphError(f"a mapping key must be a plain value, got {type(key).__name__}",
                                     Loc(self.filename, key_node.start_mark.line + 1), expected="a name")
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    raise GraphError(f"duplicate key {key!r}", Loc(self.filename, key_node.start_mark.line + 1),
                                     expected="each key once per mapping")
                out[key] = self.build(value_node, path + (key,))
                self.locs[path + (key,)] = Loc(self.filename, key_node.start_mark.line + 1)
            self.locs.pop(path + ("<key>",), None)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and len(node.value) > MAX_DIGITS:
            raise GraphError(f"a number written with {len(node.value)} characters", Loc(self.filename, line),
                             expected=f"a number of at most {MAX_DIGITS} characters (use 1.0e+9 notation)")
        try:
            return self.constructor.construct_object(node, deep=True)
        except ValueError as e:  # e.g. an integer beyond Python's digit limit
            raise GraphError(f"bad value: {str(e).splitlines()[0]}", Loc(self.filename, line)) from None
        except yaml.YAMLError as e:
            raise GraphError(f"bad value: {getattr(e, 'problem', e)}", Loc(self.filename, line)) from None

    @staticmethod
    def _default_tag(node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "tag:yaml.org,2002:map"
        if isinstance(node, yaml.SequenceNode):
            return "tag:yaml.org,2002:seq"
        return "tag:yaml.org,2002:str"


def read_file(path: str | os.PathLike) -> Located:
    """Read and parse one graph file (no ``extends`` resolution)."""
    path = Path(path)
    shown = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise GraphError("no such file", Loc(shown), expected="the path of a graph .yaml file") from None
    except IsADirectoryError:
        raise GraphError("is a directory", Loc(shown), expected="the path of a graph .yaml file") from None
    except OSError as e:
        raise GraphError(f"cannot read: {e.strerror}", Loc(shown)) from None
    if len(raw) > MAX_BYTES:
        raise GraphError(f"the file is {len(raw)} bytes", Loc(shown), expected=f"a graph under {MAX_BYTES} bytes")
    if b"\x00" in raw:
        raise GraphError("this is a binary file", Loc(shown, 1), expected="a UTF-8 YAML text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise GraphError("the file is not valid UTF-8", Loc(shown, line), expected="a UTF-8 YAML text file") from None
    return parse_text(text, shown)


def merge(base: Located, over: Located) -> Located:
    """Deep-merge ``over`` onto ``base``: mappings merge key by key, anything else replaces, ``null`` deletes."""
    data = copy.deepcopy(base.data)
    locs = dict(base.locs)

    def replace_locs(path: tuple, source: dict | None) -> None:
        for k in [k for k in locs if k[: len(path)] == path]:
            del locs[k]
        for k, v in (source or {}).items():
            if k[: len(path)] == path:
                locs[k] = v

    def walk(dst: dict, src: dict, path: tuple) -> None:
        for key, value in src.items():
            p = path + (key,)
            if value is None:
                dst.pop(key, None)
                replace_locs(p, None)
            elif isinstance(value, dict) and isinstance(dst.get(key), dict):
                locs[p] = over.locs.get(p, locs.get(p))
                walk(dst[key], value, p)
            else:
                dst[key] = copy.deepcopy(value)
                replace_locs(p, over.locs)

    if not isinstance(over.data, dict):
        raise GraphError("an override must be a mapping", over.loc())
    walk(data, over.data, ())
    return Located(data, locs)


def load_located(path: str | os.PathLike, overrides: list[str] | dict | None = None,
                 variant: str | None = None, _chain: tuple = ()) -> Located:
    """Read ``path``, resolve ``extends:`` (relative to the file), apply ``variants[variant]`` and ``--set``s."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        raise GraphError("'extends' forms a cycle: " + " -> ".join(p.name for p in _chain + (resolved,)),
                         Loc(str(path), 1), expected="a chain of base graphs without repetition")
    located = read_file(path)
    parent = located.data.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise GraphError("'extends' must be a file name", located.loc("extends"),
                             expected="extends: base_graph.yaml")
        base_path = path.parent / parent
        if not base_path.exists():
            raise GraphError(f"'extends' names {parent!r}, which does not exist next to this file",
                             located.loc("extends"), expected="an existing graph file")
        base = load_located(base_path, _chain=_chain + (resolved,))
        own = Located({k: v for k, v in located.data.items() if k != "extends"}, located.locs)
        base.data.pop("name", None)
        located = merge(base, own)
    if variant is not None:
        variants = located.data.get("variants") or {}
        if variant not in variants:
            from composer.blocks.registry import did_you_mean
            raise GraphError(f"no variant {variant!r}{did_you_mean(variant, variants)}", located.loc("variants"),
                             expected="one of: " + (", ".join(variants) or "(this graph has no variants)"))
        sub = Located(variants[variant], {k[2:]: v for k, v in located.locs.items() if k[:2] == ("variants", variant)})
        located = merge(located, sub)
    if overrides:
        located = apply_overrides(located, overrides)
    return located


def apply_overrides(located: Located, overrides: list[str] | dict) -> Located:
    """Apply ``path.to.key=value`` overrides (the value is parsed as YAML: ``4096``, ``[1, 2]``, ``{cosine: [a, b]}``)."""
    items = overrides.items() if isinstance(overrides, dict) else [_split_set(s) for s in overrides]
    for dotted, value in items:
        keys = tuple(dotted.split("."))
        if not all(keys):
            raise GraphError(f"bad override path {dotted!r}", Loc("<--set>"), expected="a dotted path like blocks.queue.size")
        if isinstance(value, str):
            value = parse_text(f"v: {value}", "<--set>").data["v"] if value.strip() else ""
        nested: object = value
        for key in reversed(keys):
            nested = {key: nested}
        over = Located(nested, {keys[: i + 1]: Loc("<--set>") for i in range(len(keys))})
        located = merge(located, over)
    return located


def _split_set(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise GraphError(f"bad --set {text!r}", Loc("<--set>"), expected="path=value, e.g. blocks.queue.size=4096")
    key, value = text.split("=", 1)
    return key.strip(), value
