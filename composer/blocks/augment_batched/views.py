"""Views of a batch: a v2 per-sample pipeline read as a ``ViewSpec``, and the batched application of specs.

``spec_of`` reads the parameters of a ``torchvision.transforms.v2`` pipeline built by the augment blocks
(blocks/augment.py, blocks/augment_recipes.py), so the per-sample and the batched paths share one definition
of each recipe and cannot drift. The batched path applies, per view: crop + resize → flip → ColorJitter (per
sample order) → grayscale → blur → solarize → normalise. Pipelines in another order are accepted when the
difference commutes (the flip commutes with every colour op, the symmetric blur with reflect padding, and
solarize), and refused otherwise (MoCo v1 puts grayscale before the jitter: ``spec_of`` raises ``ValueError``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

from composer.blocks.augment_batched import incache, ops
from composer.blocks.augment_batched.params import ViewParams, ViewSpec, sample_view

# CPU chunk of the batched kernels: 16 images of 3×224×224 float32 (9.6 MB) stay in a last-level cache, where
# B = 64 streams 38 MB through memory per elementwise pass (174 against 108 images/s for MoCo v2 in one run).
# The default CPU path ("incache") goes further: one image at a time, in place (see incache.py).
CPU_CHUNK = 16
_MODES = {v2.InterpolationMode.BILINEAR: "bilinear", v2.InterpolationMode.BICUBIC: "bicubic"}
_STAGE = {"jitter": 1, "gray": 2, "blur": 3, "solarize": 4}  # the batched order of the colour ops


def spec_of(pipeline: v2.Compose) -> ViewSpec:
    """The ``ViewSpec`` of a v2 pipeline ``RandomResizedCrop → [flip, ColorJitter, grayscale, blur, solarize]``.

    Raises ``ValueError`` naming the first transform the batched path cannot reproduce.
    """
    steps = list(pipeline.transforms) if isinstance(pipeline, v2.Compose) else [pipeline]
    crop = steps[0] if steps else None
    mode = v2.InterpolationMode(crop.interpolation) if isinstance(crop, v2.RandomResizedCrop) else None
    if mode not in _MODES or not crop.antialias:
        raise ValueError(f"the batched path needs an antialiased bilinear/bicubic RandomResizedCrop first, got "
                         f"{type(crop).__name__}")
    if crop.size[0] != crop.size[1]:
        raise ValueError(f"the batched path makes square views, got size {crop.size}")
    fields: dict = {"size": crop.size[0], "scale": tuple(crop.scale), "ratio": tuple(crop.ratio),
                    "interpolation": _MODES[mode]}
    last = 0
    for t in steps[1:]:
        p = 1.0
        if isinstance(t, v2.RandomApply) and len(t.transforms) == 1:
            p, t = float(t.p), t.transforms[0]
        if isinstance(t, v2.Identity):
            continue
        if isinstance(t, v2.RandomHorizontalFlip):
            fields["flip_p"] = p * float(t.p)
            continue
        if isinstance(t, v2.ColorJitter):
            stage = "jitter"
            fields.update(jitter=(t.brightness, t.contrast, t.saturation, t.hue), jitter_p=p)
        elif isinstance(t, v2.RandomGrayscale):
            stage = "gray"
            fields["gray_p"] = p * float(t.p)
        elif isinstance(t, v2.GaussianBlur) and t.kernel_size[0] == t.kernel_size[1]:
            stage = "blur"
            fields.update(blur_kernel=t.kernel_size[0], blur_sigma=tuple(t.sigma), blur_p=p)
        elif isinstance(t, v2.RandomSolarize) and t.threshold == 128:
            stage = "solarize"
            fields["solarize_p"] = p * float(t.p)
        else:
            raise ValueError(f"the batched path has no {type(t).__name__} (with these settings)")
        if _STAGE[stage] <= last:
            raise ValueError(f"the batched path applies jitter → grayscale → blur → solarize; this pipeline puts "
                             f"{type(t).__name__} after a later one, and the two do not commute")
        last = _STAGE[stage]
    return ViewSpec(**fields)


def apply_view(images: Tensor, spec: ViewSpec, params: ViewParams, crop: str = "loop") -> Tensor:
    """One view: (B, 3, H, W) uint8 or [0, 1] float → (B, 3, S, S) float32 in [0, 1], not normalised.

    crop: "loop" (one antialiased ``interpolate`` per sample: bit-exact with torchvision's uint8 crop) or
    "matmul" (two batched matmuls with the same weights: no per-sample launches, for accelerators; the flip is
    folded in).
    """
    if crop == "loop":
        x = ops.hflip(ops.resized_crop_loop(images, params.boxes, spec.size, spec.interpolation), params.flip)
    elif crop == "matmul":
        x = ops.resized_crop_matmul(images, params.boxes, spec.size, spec.interpolation, flip=params.flip)
    else:
        raise ValueError(f"crop must be 'loop' or 'matmul', got {crop!r}")
    x = ops.color_jitter(x, params.jitter_factors, params.jitter_order, params.jitter_on)
    x = ops.apply_grayscale(x, params.gray)
    x = ops.apply_blur(x, params.sigma, spec.blur_kernel, params.blur_on)
    return ops.apply_solarize(x, params.solarize)


def run_views(images: Tensor, specs: list[ViewSpec], generator: torch.Generator, mean: tuple[float, ...],
              std: tuple[float, ...], *, heights: Tensor | None = None, widths: Tensor | None = None,
              crop: str | None = None, chunk: int | None = None) -> Tensor:
    """Views of one output size: (B, 3, H, W) uint8 → normalised float32 (V, B, 3, S, S) on images' device.

    Parameters are drawn for the whole batch, view by view, from ``generator`` (CPU) before anything is
    applied, so the chunking and the device never change a draw. heights/widths: (B,) true sizes of a padded
    batch (default: the full H, W). crop: default "loop" on CPU, "matmul" elsewhere. chunk: images processed
    together by the batched kernels (default: the whole batch). crop "incache" (the default on CPU, for uint8
    input) runs each image's ops in place while it is in cache (``incache.apply_view_into``), same values.
    """
    n, _, h, w = images.shape
    cpu = images.device.type == "cpu"
    crop = crop or ("incache" if cpu and images.dtype == torch.uint8 else "loop" if cpu else "matmul")
    chunk = chunk or max(n, 1)
    size = specs[0].size if specs else 0
    if any(s.size != size for s in specs):
        raise ValueError(f"one call makes views of one size, got {[s.size for s in specs]}")
    params = [sample_view(generator, s, n, h if heights is None else heights, w if widths is None else widths)
              for s in specs]
    out = torch.empty((len(specs), n, 3, size, size), dtype=torch.float32, device=images.device)
    for v, (spec, p) in enumerate(zip(specs, params)):
        if crop == "incache":
            incache.apply_view_into(out[v], images, spec.size, spec.interpolation, spec.blur_kernel, p, mean, std)
            continue
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            # normalised while the chunk is still in cache, then written once into the output
            out[v, rows] = ops.normalize(apply_view(images[rows], spec, p[rows], crop), mean, std)
    return out
