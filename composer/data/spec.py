"""Data specs: one string names a dataset and its options, e.g. on the command line (``--data``).

Grammar: ``KIND`` or ``KIND:ARGS``, ARGS a comma-separated list whose first item is a path for the kinds
that read files, followed by ``key=value`` options:

    shapes                                   the embedded procedural dataset (defaults n=10000,size=64,seed=0)
    shapes:n=2000,size=64,seed=0
    folder:PATH                              image folders (PATH/train and PATH/val are used when present)
    folder:PATH,decode=device                the workers send file bytes; the trainer decodes (nvJPEG on CUDA)
    cifar10:ROOT  cifar100:ROOT  stl10:ROOT  local copies; add ",download=true" to fetch them
    csv:FILE.csv[,img_key=filepath,caption_key=caption,sep=\\t]
    grounding:FILE.json[,images=DIR]
    wds:SHARDS[,val=SHARDS,max_errors=1000]  WebDataset shards by brace pattern, e.g. shards/{00000..00099}.tar
                                             (val= names the validation split's shards; ``::`` joins patterns)

Paths cannot contain commas.
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch.utils.data import Dataset

from composer.data.captions import CaptionCSV
from composer.data.folders import CIFAR10, CIFAR100, STL10, ImageFolderDataset
from composer.data.grounding import GroundingJSON
from composer.data.shapes import ShapesDataset
from composer.data.shards import ShardDataset


def _shards(path: str, split: str, val: str | None = None, **options) -> Dataset:
    if split == "val":
        if val is None:
            raise ValueError("data spec wds: the validation split needs its shards: add ,val=PATTERN")
        path = val
    return ShardDataset(path, **options)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _separator(text: str) -> str:
    return {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";"}.get(text, text)


# kind: (takes a path, option types, opener(path, split, **options))
KINDS: dict[str, tuple[bool, dict[str, Callable[[str], object]], Callable[..., Dataset]]] = {
    "shapes": (False, {"n": int, "size": int, "seed": int},
               lambda path, split, **o: ShapesDataset(split=split, **o)),
    "folder": (True, {"decode": str}, lambda path, split, **o: ImageFolderDataset(path, split=split, **o)),
    "cifar10": (True, {"download": _bool}, lambda path, split, **o: CIFAR10(path, split=split, **o)),
    "cifar100": (True, {"download": _bool}, lambda path, split, **o: CIFAR100(path, split=split, **o)),
    "stl10": (True, {"download": _bool}, lambda path, split, **o: STL10(path, split=split, **o)),
    "csv": (True, {"img_key": str, "caption_key": str, "sep": _separator},
            lambda path, split, **o: CaptionCSV(path, **o)),
    "grounding": (True, {"images": str}, lambda path, split, **o: GroundingJSON(path, **o)),
    "wds": (True, {"val": str, "max_errors": int}, _shards),
}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, object]]:
    """Split a data spec into (kind, path or None, typed options); raises ValueError with a one-line message."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"data spec {spec!r}: unknown kind {kind!r}{_did_you_mean(kind, list(KINDS))} "
                         f"(known: {', '.join(KINDS)})")
    takes_path, types, _ = KINDS[kind]
    items = [item.strip() for item in rest.split(",")] if rest.strip() else []
    path = None
    if takes_path:
        if not items or not items[0] or "=" in items[0]:
            raise ValueError(f"data spec {spec!r}: {kind} needs a path first, as in {kind}:PATH")
        path, items = items[0], items[1:]
    options: dict[str, object] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"data spec {spec!r}: expected key=value, got {item!r}")
        if key not in types:
            known = ", ".join(types) or "none"
            raise ValueError(f"data spec {spec!r}: unknown option {key!r} for {kind}"
                             f"{_did_you_mean(key, list(types))} (options: {known})")
        try:
            options[key] = types[key](value.strip())
        except ValueError as err:
            raise ValueError(f"data spec {spec!r}: bad value for {key}: {err}") from None
    return kind, path, options


def open_dataset(spec: str, split: str = "train") -> Dataset:
    """Open the dataset a spec names, for ``split`` ("train" or "val"; datasets without splits ignore it).

    Raises:
        ValueError: a malformed spec or option (one line, with a "did you mean" for unknown names).
        FileNotFoundError: a path that does not exist (the message names it).
    """
    kind, path, options = parse_spec(spec)
    return KINDS[kind][2](path, split, **options)
