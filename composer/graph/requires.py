"""``requires:``: the plugin packages a graph needs, checked before any block type is looked up.

    requires: [my-blocks]                 # a distribution (pip) name, optionally with a version: my-blocks>=0.2

Each entry is a distribution name (PEP 508 name and optional version specifier) or an importable module. An
installed distribution's ``pretext_composer.blocks`` entry points are loaded (so its blocks are registered even
when the registry was read before it was installed); a plain module is imported. A missing package is one
line that says what to install, instead of "unknown block type" for each of its blocks.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from importlib import metadata

from composer.runtime.errors import GraphError

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def check_requires(located, path: str) -> None:
    """Raise ``GraphError`` (one line) for the first ``requires`` entry that is missing or too old."""
    value = located.data.get("requires")
    if value is None:
        return
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise GraphError(f"'requires' must be a list of package names, got {value!r}", located.loc("requires"),
                         expected="requires: [my-blocks] or [my-blocks>=0.2]")
    from composer.blocks import registry
    for i, text in enumerate(value):
        loc = located.loc("requires", i)
        m = _REQUIREMENT.match(text)
        if not m:
            raise GraphError(f"requires: {text!r} is not a package name", loc,
                             expected="a pip package name, optionally with a version such as my-blocks>=0.2")
        name, spec = m.group(1), m.group(3)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        if version is None:
            if not spec and _importable(name):
                importlib.import_module(name)  # a module on the path: importing it registers its blocks
                continue
            raise GraphError(f"requires: the plugin package {name!r} is not installed", loc,
                             expected=f"pip install '{text.strip()}' (then 'ptc blocks' lists its blocks)")
        if spec and not _satisfies(version, spec):
            raise GraphError(f"requires: {text.strip()!r}, but {name} {version} is installed", loc,
                             expected=f"pip install --upgrade '{text.strip()}'")
        registry.load_distribution(name)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _satisfies(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet  # installed with timm (huggingface_hub depends on it)
    return SpecifierSet(spec).contains(version, prereleases=True)
