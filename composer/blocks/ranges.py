"""Declared value ranges of block parameters: ``Range(gt=0)`` for a temperature, ``Range(ge=0, le=1)`` for a momentum.

A block states ranges in a class attribute read by the registry::

    @block("loss.info_nce")
    class InfoNCE(nn.Module):
        ranges = {"temperature": Range(gt=0)}

Parameters a block does not list get the range of their name in ``BY_NAME`` (every ``temperature`` is > 0, every
``momentum`` in [0, 1], every ``embed_dim`` >= 1 ...), from the papers' meaning of these names. Every number is
also required to be finite (a NaN learning rate or KL weight trains silently into NaNs). A range applies to each
number inside a value: both ends of ``scale: [0.2, 1.0]`` and of a schedule ``{cosine: [0.996, 1.0]}``.

``ptc schema`` turns ranges into JSON-Schema ``minimum``/``exclusiveMinimum``/``maximum``/``exclusiveMaximum``;
``ptc check`` reports a value outside its range at the line where it was written.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds on a number: ``gt``/``ge`` below, ``lt``/``le`` above (None: unbounded); always finite."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def violation(self, x: float) -> str | None:
        """Why ``x`` is outside the range, or None when it is inside."""
        if not math.isfinite(x):
            return f"{x} is not a finite number"
        if (self.gt is not None and not x > self.gt) or (self.ge is not None and not x >= self.ge) or \
                (self.lt is not None and not x < self.lt) or (self.le is not None and not x <= self.le):
            return f"{x!r} is out of range"
        return None

    def describe(self) -> str:
        """``a number > 0``, ``a number in [0, 1]``, ``a number in (0, 1)`` ..."""
        lo = (f"({_num(self.gt)}" if self.gt is not None else f"[{_num(self.ge)}" if self.ge is not None else None)
        hi = (f"{_num(self.lt)})" if self.lt is not None else f"{_num(self.le)}]" if self.le is not None else None)
        if lo and hi:
            return f"a number in {lo}, {hi}"
        if lo:
            return f"a number {'>' if self.gt is not None else '>='} {lo[1:]}"
        if hi:
            return f"a number {'<' if self.lt is not None else '<='} {hi[:-1]}"
        return "a finite number"

    def json_schema(self) -> dict:
        keys = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
        return {keys[k]: v for k, v in dataclasses.asdict(self).items() if v is not None}


FINITE = Range()
POSITIVE = Range(gt=0)
COUNT = Range(ge=1)  # sizes, dimensions, depths, heads, vocabularies: at least one
NON_NEGATIVE = Range(ge=0)
PROBABILITY = Range(ge=0, le=1)
FRACTION = Range(gt=0, le=1)  # a share of an image or crop: empty is meaningless, all of it is allowed

_COUNTS = ("size", "dim", "in_dim", "out_dim", "hidden_dim", "bottleneck_dim", "embed_dim", "codebook_dim", "depth",
           "num_heads", "heads", "layers", "width", "output_dim", "patch_size", "img_size", "global_size",
           "local_size", "tokenizer_size", "vocab_size", "num_tokens", "context_length", "channels", "text_dim",
           "levels", "num_convs", "groups", "num_layers", "views", "npred", "topk", "num_masking_patches",
           "min_num_patches", "max_num_patches", "dims", "strides", "chunk_size", "min_keep")

BY_NAME: dict[str, Range] = {
    **{name: COUNT for name in _COUNTS},
    "temperature": POSITIVE, "student_temp": POSITIVE, "teacher_temp": POSITIVE,  # softmax(z / T): T > 0
    "momentum": PROBABILITY,  # EMA / SGD momentum m in [0, 1]
    "ratio": Range(gt=0, lt=1),  # MAE mask ratio: 0 masks nothing (no loss), 1 leaves no visible patch
    "mlp_ratio": POSITIVE, "eps": POSITIVE, "anchor_scale": POSITIVE, "min_aspect": POSITIVE,
    "max_aspect": POSITIVE, "aspect_ratio": POSITIVE, "std": POSITIVE,
    "drop_path": Range(ge=0, lt=1), "flip": PROBABILITY, "blur_prob": PROBABILITY, "alpha": PROBABILITY,
    "blur": PROBABILITY, "solarize": PROBABILITY, "gray": PROBABILITY, "jitter_p": PROBABILITY,  # augment.views
    "repeat": COUNT, "solarize_threshold": Range(ge=0, le=255),
    "prior_prob": Range(gt=0, lt=1),  # focal-loss bias init -log((1 - p) / p) needs 0 < p < 1
    "crop_min": FRACTION, "crop_fraction": FRACTION, "scale": FRACTION, "global_scale": FRACTION,
    "local_scale": FRACTION, "pred_scale": FRACTION, "enc_scale": FRACTION,
    "drop_path_rate": Range(ge=0, lt=1), "drop_rate": Range(ge=0, lt=1),  # timm model_args: probabilities
    "kl_weight": NON_NEGATIVE, "gamma": NON_NEGATIVE, "beta": NON_NEGATIVE, "strength": NON_NEGATIVE,
    "layer_scale": NON_NEGATIVE, "local_crops": NON_NEGATIVE, "index": NON_NEGATIVE, "out_indices": NON_NEGATIVE,
}


# A crop's side in pixels, for the augmentations (the data stage runs on the CPU, per sample). The largest crop of
# the implemented recipes is GLIP's 800 (DINOv2 518, SAM 1024); a side of thousands is a typo, and the Gaussian
# blur whose kernel grows with the side (10 % of it, SimCLR) would make `ptc check`'s example run take minutes
# inside one convolution, where no time budget can stop it.
IMAGE_SIDE = Range(ge=1, le=1024)
BY_FAMILY: dict[str, dict[str, Range]] = {
    "augment": {name: IMAGE_SIDE for name in ("size", "global_size", "local_size", "tokenizer_size")},
}


def range_of(cls: type, name: str, kind: str = "") -> Range:
    """The range of parameter ``name`` of block class ``cls`` (registered as ``kind``): its ``ranges`` entry, else
    its family's (``augment.*``: crop sides), else by name, else finite."""
    own = getattr(cls, "ranges", None) or {}
    family = BY_FAMILY.get(kind.split(".", 1)[0], {})
    return own.get(name) or family.get(name) or BY_NAME.get(name) or FINITE


def range_by_name(name: str) -> Range:
    """The range of a number stored under key ``name`` inside a parameter's mapping (timm's ``model_args:
    {drop_path_rate: 0.1}``): by name, else finite."""
    return BY_NAME.get(name) or FINITE


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
