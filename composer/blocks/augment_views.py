"""Augmentation blocks whose views are described in YAML: ``augment.views`` and ``augment.multi_crop``.

A method's recipe is a list of views; each view is a mapping of the keys below, over a shared ``defaults``
mapping (a view's own keys win). Every view becomes one ``v2.Compose`` in the fixed order

    RandomResizedCrop → horizontal flip → ColorJitter (random order, RandomApply) → grayscale → blur → solarize

then ``ToDtype`` + ``Normalize`` on the stacked batch (``Augment``), so the batched path
(``augment_batched.spec_of``, ``--augment device``) reads the same pipelines. The flip commutes with every
colour op, so its place only changes the order of the random draws, not the distribution.

Keys of a view (defaults in brackets):

- ``size`` [224]: output side S; ``scale`` [[0.08, 1]]: crop-area range; ``ratio`` [[3/4, 4/3]]: aspect range;
  ``interpolation`` [bilinear]: ``bilinear`` or ``bicubic``;
- ``flip`` [0.5]: horizontal-flip probability;
- ``jitter`` [null]: ``[brightness, contrast, saturation, hue]`` as torchvision ``ColorJitter``; ``jitter_p``
  [0.8]: its probability;
- ``gray`` [0]: grayscale probability;
- ``blur`` [0]: Gaussian-blur probability; ``blur_sigma`` [[0.1, 2]]: sigma range; ``blur_kernel`` [pil]:
  ``pil`` (2·ceil(3σmax)+1 taps, PIL's ``GaussianBlur(radius=σ)`` of MoCo v2/v3, DINO, SimSiam), ``simclr``
  (2·((S // 10) // 2)+1, SimCLR/BYOL/Barlow Twins) or an odd int;
- ``solarize`` [0]: solarization probability; ``solarize_threshold`` [128]: uint8 level from which values invert;
- ``repeat`` [1]: how many views this entry stands for (DINO's local crops).

An op whose probability is 0 (or a null jitter) is left out of the pipeline, so it draws no random number.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

from torch import Tensor, nn
from torchvision.transforms import v2

from composer.blocks.augment import (
    BICUBIC,
    BILINEAR,
    BLUR_SIGMA,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RATIO,
    SOLARIZE_THRESHOLD,
    Augment,
    blur,
    colour_jitter,
    pil_blur_kernel,
    simclr_blur_kernel,
    solarize,
)
from composer.blocks.ranges import FINITE, IMAGE_SIDE
from composer.blocks.registry import block, did_you_mean

VIEW_DEFAULTS: dict = {
    "size": 224, "scale": (0.08, 1.0), "ratio": RATIO, "interpolation": "bilinear", "flip": 0.5, "jitter": None,
    "jitter_p": 0.8, "gray": 0.0, "blur": 0.0, "blur_sigma": BLUR_SIGMA, "blur_kernel": "pil", "solarize": 0.0,
    "solarize_threshold": SOLARIZE_THRESHOLD, "repeat": 1,
}
_PROBABILITIES = ("flip", "jitter_p", "gray", "blur", "solarize")
_INTERPOLATIONS = {"bilinear": BILINEAR, "bicubic": BICUBIC}
_HUE_MAX = 0.5  # ColorJitter's hue factor lies in [0, 0.5]


class ViewError(ValueError):
    """A wrong view key; ``path`` leads to it from the block (``("views", 1, "blur")``) so that the graph
    checker reports the line where it was written."""

    def __init__(self, message: str, path: tuple):
        super().__init__(message)
        self.path = path


class MultiCrops(NamedTuple):
    """Multi-crop output: global crops (G, B, 3, Sg, Sg) and local crops (L, B, 3, Sl, Sl)."""

    global_crops: Tensor
    local_crops: Tensor


class ConfiguredViews(Augment):
    """Shared machinery: read view mappings over ``defaults``, check every key, build one pipeline per view."""

    def _fail(self, path: tuple, message: str) -> ViewError:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        return ViewError(f"{self.kind}: {where}: {message}", path)

    def _read(self, path: tuple, entry, base: Mapping) -> dict:
        """One checked view: ``base`` (the defaults) overridden by ``entry``'s keys."""
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise self._fail(path, f"a view is a mapping of keys ({', '.join(VIEW_DEFAULTS)}), "
                                   f"got {type(entry).__name__}")
        for key in entry:
            if key not in VIEW_DEFAULTS:
                raise self._fail(path + (key,), f"unknown key {key!r}{did_you_mean(key, VIEW_DEFAULTS)}; a view "
                                                f"has {', '.join(VIEW_DEFAULTS)}")
        view = {**base, **entry}
        for key in entry:  # only the keys written here: the defaults were checked where they were written
            view[key] = self._check(path + (key,), key, entry[key])
        return view

    def _check(self, path: tuple, key: str, value):
        """The value of one view key, checked and normalised (tuples for pairs)."""
        def number(x) -> float:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise self._fail(path, f"needs a finite number, got {x!r}")
            return float(x)

        def pair(x) -> tuple[float, float]:
            if isinstance(x, (str, bytes)) or not isinstance(x, Sequence) or len(x) != 2:
                raise self._fail(path, f"needs a pair [low, high], got {x!r}")
            lo, hi = number(x[0]), number(x[1])
            if not lo <= hi:
                raise self._fail(path, f"needs low <= high, got {list(x)!r}")
            return lo, hi

        def integer(x, low: int, high: int | None = None) -> int:
            if isinstance(x, bool) or not isinstance(x, int) or x < low or (high is not None and x > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise self._fail(path, f"needs an int {bound}, got {x!r}")
            return x

        if key in _PROBABILITIES:
            p = number(value)
            if not 0.0 <= p <= 1.0:
                raise self._fail(path, f"is a probability and must lie in [0, 1], got {value!r}")
            return p
        if key == "size":  # capped like every augment block's side: a huge blur cannot be interrupted
            return integer(value, 1, int(IMAGE_SIDE.le))
        if key == "repeat":
            return integer(value, 1)
        if key == "solarize_threshold":
            return integer(value, 0, 255)
        if key == "scale":
            lo, hi = pair(value)
            if not 0.0 < lo <= hi <= 1.0:
                raise self._fail(path, f"is a crop-area range and needs 0 < low <= high <= 1, got {list(value)!r}")
            return lo, hi
        if key in ("ratio", "blur_sigma"):
            lo, hi = pair(value)
            if not lo > 0:
                raise self._fail(path, f"needs 0 < low <= high, got {list(value)!r}")
            return lo, hi
        if key == "interpolation":
            if value not in _INTERPOLATIONS:
                raise self._fail(path, f"must be 'bilinear' or 'bicubic', got {value!r}"
                                       f"{did_you_mean(value, _INTERPOLATIONS)}")
            return value
        if key == "blur_kernel":
            if value in ("pil", "simclr"):
                return value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise self._fail(path, f"must be 'pil', 'simclr' or an odd int >= 1, got {value!r}")
            return value
        if key == "jitter":
            if value is None:
                return None
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 4:
                raise self._fail(path, f"needs [brightness, contrast, saturation, hue] or null, got {value!r}")
            factors = tuple(number(x) for x in value)
            if min(factors) < 0 or factors[3] > _HUE_MAX:
                raise self._fail(path, f"needs factors >= 0 and hue <= {_HUE_MAX}, got {list(value)!r}")
            return factors
        raise AssertionError(key)  # unreachable: unknown keys are refused in _read

    def _group(self, field: str, entries, defaults: Mapping, *, may_be_empty: bool) -> tuple[list[v2.Compose], int]:
        """The pipelines of one output (an entry with ``repeat: n`` appears n times) and their common side."""
        if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
            raise self._fail((field,), f"needs a list of views, got {type(entries).__name__}")
        if not entries and not may_be_empty:
            raise self._fail((field,), "is empty; it needs at least one view")
        pipelines, size, first = [], defaults["size"], None
        for i, entry in enumerate(entries):
            view = self._read((field, i), entry, defaults)
            if first is None:
                first, size = i, view["size"]
            elif view["size"] != size:
                raise self._fail((field, i, "size"), f"is {view['size']} but {field}[{first}] is {size}: one "
                                                     f"output holds views of one size (augment.multi_crop makes "
                                                     f"two sizes)")
            pipelines += [self._pipeline((field, i), view)] * view["repeat"]
        return pipelines, size

    def _defaults(self, defaults) -> dict:
        if defaults is None:
            defaults = {}
        if not isinstance(defaults, Mapping):
            raise self._fail(("defaults",), f"needs a mapping of view keys, got {type(defaults).__name__}")
        return self._read(("defaults",), defaults, VIEW_DEFAULTS)

    def _pipeline(self, path: tuple, view: dict) -> v2.Compose:
        size = view["size"]
        kernel = view["blur_kernel"]
        if kernel == "pil":
            kernel = pil_blur_kernel(view["blur_sigma"][1], size)
        elif kernel == "simclr":
            kernel = simclr_blur_kernel(size)
        elif kernel > 2 * size - 1 and view["blur"] > 0:  # reflect padding needs a pad below the side
            raise self._fail(path + ("blur_kernel",), f"{kernel} taps need views of at least {kernel // 2 + 1} "
                                                      f"pixels (reflect padding), got size {size}")
        steps: list[nn.Module] = [v2.RandomResizedCrop(size, scale=view["scale"], ratio=view["ratio"],
                                                       interpolation=_INTERPOLATIONS[view["interpolation"]])]
        if view["flip"] > 0:
            steps.append(v2.RandomHorizontalFlip(view["flip"]))
        if view["jitter"] is not None and any(view["jitter"]) and view["jitter_p"] > 0:
            steps.append(colour_jitter(*view["jitter"], p=view["jitter_p"]))
        if view["gray"] > 0:
            steps.append(v2.RandomGrayscale(view["gray"]))
        steps.append(blur(kernel, view["blur"], view["blur_sigma"]))
        steps.append(solarize(view["solarize"], view["solarize_threshold"]))
        return v2.Compose([s for s in steps if not isinstance(s, v2.Identity)])

    # ----- sizes for the graph checker and ``ptc explain``, read without running the block -----
    @classmethod
    def _built(cls, params: Mapping) -> ConfiguredViews | None:
        """The block built from graph parameters, or None if they are wrong (the build reports that)."""
        try:
            return cls(**params)
        except (ValueError, TypeError):
            return None

    @classmethod
    def image_sides(cls, params: Mapping) -> dict[str | None, int]:
        """The side of the images of each output (None: the only one), for grid checks of maskers."""
        built = cls._built(params)
        return built._sides() if built is not None else {}

    @classmethod
    def shape_symbols(cls, params: Mapping) -> list[tuple[str, int, str, str]]:
        """(letter, value, parameter, meaning) of the sizes of the outputs, for ``ptc explain``."""
        built = cls._built(params)
        return built._symbols() if built is not None else []

    def _pipelines(self) -> list[v2.Compose]:
        seen: dict[int, v2.Compose] = {}
        for group in self.groups:
            for p in group:
                seen.setdefault(id(p), p)
        return list(seen.values())


@block("augment.views")
class ViewsAugment(ConfiguredViews):
    """Views of one size described in YAML: a list of views over shared defaults (SimCLR, MoCo v3, BYOL ...).

    Each view is a mapping of the keys in ``composer/blocks/augment_views.py`` (size, scale, ratio,
    interpolation, flip, jitter, jitter_p, gray, blur, blur_sigma, blur_kernel, solarize, solarize_threshold,
    repeat) run as RandomResizedCrop → flip → ColorJitter → grayscale → blur → solarize → normalise. SimCLR
    (google-research/simclr · data_util.py · preprocess_for_train) is ``defaults: {interpolation: bicubic,
    jitter: [0.8, 0.8, 0.8, 0.2], gray: 0.2, blur: 0.5, blur_kernel: simclr}, views: [{}, {}]``; MoCo v3
    (facebookresearch/moco-v3 · main_moco.py) has views ``{blur: 1.0}`` and ``{blur: 0.1, solarize: 0.2}``.

    Args:
        views: the list of views V (mappings of view keys; ``repeat: n`` counts n times); all of one size S.
        defaults: view keys shared by every view (a view's own keys win; unset keys take the defaults of
            ``augment_views.VIEW_DEFAULTS``: size 224, scale [0.08, 1], bilinear, flip 0.5, no jitter ...).
        mean: per-channel normalisation mean (ImageNet mean by default).
        std: per-channel normalisation std (ImageNet std by default).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (V, B, 3, S, S) float32, views in the order listed (a repeated entry's copies together).
    """

    ranges: ClassVar[dict] = {"views": FINITE, "defaults": FINITE}  # the per-view keys are checked by the block itself

    def __init__(self, *, views: list[dict], defaults: dict | None = None,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(mean=mean, std=std)
        pipelines, self.size = self._group("views", views, self._defaults(defaults), may_be_empty=False)
        self.groups = [pipelines]
        self.pipelines = nn.ModuleList(self._pipelines())  # registered once each (a repeated view is one module)

    def forward(self, image: Tensor | list[Tensor]) -> Tensor:
        return self._views(self.groups[0], self._samples(image), self.size)

    def _sides(self) -> dict[str | None, int]:
        return {None: self.size}

    def _symbols(self) -> list[tuple[str, int, str, str]]:
        return [("S", self.size, "views", "side S of the views"),
                ("V", len(self.groups[0]), "views", "number of views V")]


@block("augment.multi_crop")
class MultiCropAugment(ConfiguredViews):
    """Multi-crop described in YAML: global views of one size and local views of another (DINO, SwAV, iBOT).

    Views are mappings of the keys of ``augment.views``. DINO (facebookresearch/dino · main_dino.py ·
    DataAugmentationDINO) is ``defaults: {interpolation: bicubic, jitter: [0.4, 0.4, 0.2, 0.1], gray: 0.2},
    global_views: [{size: 224, scale: [0.4, 1], blur: 1.0}, {size: 224, scale: [0.4, 1], blur: 0.1,
    solarize: 0.2}], local_views: [{size: 96, scale: [0.05, 0.4], blur: 0.5, repeat: 8}]``.

    Args:
        global_views: the G global views (at least one), all of one size Sg.
        local_views: the L local views, all of one size Sl (may be empty: local_crops (0, B, 3, Sl, Sl) with
            Sl the defaults' size).
        defaults: view keys shared by every view (a view's own keys win).
        mean: per-channel normalisation mean (ImageNet mean by default).
        std: per-channel normalisation std (ImageNet std by default).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns ``MultiCrops(global_crops (G, B, 3, Sg, Sg), local_crops (L, B, 3, Sl, Sl))``, float32.
    """

    ranges: ClassVar[dict] = {"global_views": FINITE, "local_views": FINITE, "defaults": FINITE}

    def __init__(self, *, global_views: list[dict], local_views: list[dict] | None = None,
                 defaults: dict | None = None,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(mean=mean, std=std)
        base = self._defaults(defaults)
        global_pipes, self.global_size = self._group("global_views", global_views, base, may_be_empty=False)
        local_pipes, self.local_size = self._group("local_views", local_views or [], base, may_be_empty=True)
        self.groups = [global_pipes, local_pipes]
        self.pipelines = nn.ModuleList(self._pipelines())

    def forward(self, image: Tensor | list[Tensor]) -> MultiCrops:
        samples = self._samples(image)  # one draw of the global generator for both outputs (batched path)
        return MultiCrops(self._views(self.groups[0], samples, self.global_size),
                          self._views(self.groups[1], samples, self.local_size))

    def _sides(self) -> dict[str | None, int]:
        return {"global_crops": self.global_size, "local_crops": self.local_size}

    def _symbols(self) -> list[tuple[str, int, str, str]]:
        return [("G", self.global_size, "global_views", "side G of the global crops"),
                ("L", self.local_size, "local_views", "side L of the local crops"),
                ("V", len(self.groups[1]), "local_views", "number of local crops V")]
