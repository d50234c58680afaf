"""The block registry: a block's Python signature is its declaration.

A block is an ``nn.Module`` class registered under a kind such as ``"loss.info_nce"``::

    @block("loss.info_nce")
    class InfoNCE(nn.Module):
        '''MoCo's InfoNCE against a memory of negatives.

        Args:
            temperature: softmax temperature T (MoCo v1 0.07, v2 0.2).
        '''
        def __init__(self, *, temperature: float = 0.2): ...
        def forward(self, query: Tensor, positive: Tensor, negatives: Tensor) -> Tensor: ...

Everything the graph language, the JSON Schema, ``ptc blocks`` and the diagrams know about a block is read
from that class:

- parameters: the keyword-only ``__init__`` arguments, their annotations, defaults and the ``Args:`` docs;
- input ports: the parameters of ``forward`` (those without a default are required);
- output ports: ``forward``'s return annotation; a ``NamedTuple`` gives named outputs (``masks.context``);
- state-update inputs: the keyword-only parameters of ``update(self, step, *, ...)``, if the block has one;
- value ranges: the class attribute ``ranges`` ({param: Range(gt=0)}), else ranges by parameter name
  (``composer.blocks.ranges.BY_NAME``); every number must be finite;
- stage: the class attribute ``stage`` (``"data"`` blocks run in DataLoader workers, ``"model"`` on device).

Third-party packages add blocks by exposing a module in the ``pretext_composer.blocks`` entry-point group;
importing the module registers its blocks.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from importlib import metadata

from torch import nn

from composer.blocks.ranges import Range, range_by_name, range_of

ENTRY_POINT_GROUP = "pretext_composer.blocks"
STAGES = ("data", "model")
# set by the graph compiler on every block it builds: a function that builds the block once more from the same
# graph parameters, with fresh random weights (teacher.ema's init: independent)
REBUILD_ATTRIBUTE = "_rebuild_block"


class BlockRef(str):
    """Annotation for a parameter that names another block of the graph (``teacher.ema``'s ``source``).

    The compiler builds the referenced block first and passes the built module in its place.
    """


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    annotation: typing.Any
    default: typing.Any  # inspect.Parameter.empty when required
    doc: str
    range: Range = Range()  # bounds on every number in the value (see composer.blocks.ranges)

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class Port:
    name: str
    required: bool
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class BlockInfo:
    """Everything known about one registered block kind, derived from its class."""

    kind: str
    cls: type
    params: dict[str, Param]
    inputs: dict[str, Port]
    outputs: tuple[str, ...] | None  # None: one unnamed tensor output
    update_inputs: dict[str, Port]
    stage: str
    summary: str
    doc: str

    @property
    def family(self) -> str:
        """The part before the dot: ``augment``, ``encoder``, ``teacher``, ``memory``, ``loss`` ..."""
        return self.kind.split(".", 1)[0]

    @property
    def has_update(self) -> bool:
        return hasattr(self.cls, "update")

    def ports_for(self, params: dict) -> dict[str, Port]:
        """The input ports of one instance: the signature's, or, for a block whose ports depend on its
        parameters (``loss.expr``: the expression's free names), its ``input_ports(params)`` classmethod."""
        return self.cls.input_ports(params) if hasattr(self.cls, "input_ports") else self.inputs

    @property
    def ports_follow_source(self) -> bool:
        """A wrapper (``teacher.ema``) whose ports are those of the block it wraps."""
        return bool(getattr(self.cls, "ports_follow_source", False))


_REGISTRY: dict[str, BlockInfo] = {}
_PLUGINS_LOADED = False


def block(kind: str):
    """Class decorator registering an ``nn.Module`` as the block ``kind`` (``"family.name"``)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*", kind):
        raise ValueError(f"block kind {kind!r} must look like 'family.name' (lowercase, one dot)")

    def register(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@block({kind!r}) must decorate an nn.Module subclass, got {cls!r}")
        if kind in _REGISTRY and _REGISTRY[kind].cls is not cls:
            raise ValueError(f"block kind {kind!r} is registered twice ({_REGISTRY[kind].cls.__qualname__} "
                             f"and {cls.__qualname__})")
        _REGISTRY[kind] = describe(kind, cls)
        cls.kind = kind
        return cls

    return register


def describe(kind: str, cls: type) -> BlockInfo:
    """Read parameters, ports, outputs, update inputs and stage from ``cls``'s signatures."""
    doc = inspect.getdoc(cls) or ""
    arg_docs = _parse_args_section(doc)
    hints_init = _hints(cls.__init__)
    params = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.kind is not p.KEYWORD_ONLY:
            raise TypeError(f"{cls.__qualname__}.__init__: block parameter {p.name!r} must be keyword-only "
                            "(put a '*' before the parameters)")
        params[p.name] = Param(p.name, hints_init.get(p.name, typing.Any), p.default, arg_docs.get(p.name, ""),
                               range_of(cls, p.name, kind))
    unknown = set(getattr(cls, "ranges", None) or {}) - set(params)
    if unknown:
        raise TypeError(f"{cls.__qualname__}.ranges names {sorted(unknown)}, which are not parameters")

    inputs = {}
    for p in inspect.signature(cls.forward).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        inputs[p.name] = Port(p.name, p.default is inspect.Parameter.empty, arg_docs.get(p.name, ""))

    ret = _hints(cls.forward).get("return")
    outputs = tuple(ret._fields) if isinstance(ret, type) and issubclass(ret, tuple) and hasattr(ret, "_fields") \
        else None

    update_inputs = {}
    if hasattr(cls, "update"):
        for p in inspect.signature(cls.update).parameters.values():
            if p.name in ("self", "step") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            update_inputs[p.name] = Port(p.name, p.default is inspect.Parameter.empty, arg_docs.get(p.name, ""))

    stage = getattr(cls, "stage", "model")
    if stage not in STAGES:
        raise ValueError(f"{cls.__qualname__}.stage must be one of {STAGES}, got {stage!r}")
    summary = doc.splitlines()[0] if doc else ""
    return BlockInfo(kind, cls, params, inputs, outputs, update_inputs, stage, summary, doc)


def get(kind: str) -> BlockInfo:
    """The registered block ``kind``; ``KeyError`` with a "did you mean" for unknown kinds."""
    load_all()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown block type {kind!r}{did_you_mean(kind, _REGISTRY)}") from None


def all_blocks() -> dict[str, BlockInfo]:
    load_all()
    return dict(sorted(_REGISTRY.items()))


def load_all() -> None:
    """Import the built-in blocks and every plugin of the ``pretext_composer.blocks`` entry-point group."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    import composer.blocks  # noqa: F401  (importing registers the built-in blocks)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def load_distribution(name: str) -> int:
    """Load the ``pretext_composer.blocks`` entry points of the installed distribution ``name`` (a graph's
    ``requires:``); returns how many. Loading one twice is harmless: a module is imported once."""
    load_all()
    eps = [ep for ep in metadata.distribution(name).entry_points if ep.group == ENTRY_POINT_GROUP]
    for ep in eps:
        ep.load()
    return len(eps)


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _hints(fn) -> dict:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return dict(getattr(fn, "__annotations__", {}))


def _parse_args_section(doc: str) -> dict[str, str]:
    """Google-style ``Args:`` / ``Inputs:`` / ``Update:`` sections → {name: text}."""
    out: dict[str, str] = {}
    current = None
    in_section = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Inputs:", "Update:", "Parameters:"):
            in_section, current = True, None
            continue
        if in_section:
            m = re.match(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if m and (len(line) - len(line.lstrip())) <= 8:
                current = m.group(1)
                out[current] = m.group(2).strip()
            elif stripped and current and line.startswith(" " * 8):
                out[current] += " " + stripped
            elif not stripped:
                current = None
            elif not line.startswith(" "):
                in_section, current = False, None
    return out
