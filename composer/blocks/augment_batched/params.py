"""Per-sample random parameters of the batched augmentations, drawn like ``torchvision.transforms.v2``.

A ``ViewSpec`` describes one view in torchvision's own terms; ``sample_view`` draws the parameters of every
sample of a batch from a CPU ``torch.Generator`` (so a seed gives the same views on CPU and CUDA). The
distributions are those of torchvision 0.29's ``make_params``:

- ``RandomResizedCrop``: 10 tries of area ~ U(scale)·H·W and log-ratio ~ U(log ratio), rounded half-to-even
  (Python's ``round``), accepted if the box fits; else a central crop with the ratio clamped;
- ``ColorJitter``: brightness/contrast/saturation ~ U(range), hue ~ U(range), in a random order drawn per call
  (= per sample here); the whole jitter under ``RandomApply(p)``;
- ``RandomGrayscale(p)``, ``GaussianBlur`` with sigma ~ U(sigma range) under ``RandomApply(p)``,
  ``RandomSolarize(p)`` and ``RandomHorizontalFlip(p)``: torchvision applies iff ``rand < p``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RATIO = (3 / 4, 4 / 3)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's op ids (torchvision fn_idx)
IDENTITY = (1.0, 1.0, 1.0, 0.0)  # the factor of each jitter op that leaves the image unchanged
Range = tuple[float, float]


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation in torchvision terms (built from a v2 pipeline by ``views.spec_of``).

    Attributes:
        size: output side S.
        scale, ratio: RandomResizedCrop area-fraction and aspect-ratio ranges.
        interpolation: "bilinear" or "bicubic" (antialiased, as v2 on tensors).
        flip_p: RandomHorizontalFlip probability.
        jitter: ColorJitter factor ranges (brightness, contrast, saturation, hue), None = op absent
            (torchvision's attributes as they are); jitter_p: its RandomApply probability.
        gray_p: RandomGrayscale probability.
        blur_kernel, blur_sigma, blur_p: GaussianBlur kernel size, sigma range and RandomApply probability.
        solarize_p: RandomSolarize probability (threshold 128 on the uint8 scale).
    """

    size: int = 224
    scale: Range = (0.08, 1.0)
    ratio: Range = RATIO
    interpolation: str = "bilinear"
    flip_p: float = 0.0
    jitter: tuple[Range | None, Range | None, Range | None, Range | None] = (None, None, None, None)
    jitter_p: float = 0.0
    gray_p: float = 0.0
    blur_kernel: int = 1
    blur_sigma: Range = (0.1, 2.0)
    blur_p: float = 0.0
    solarize_p: float = 0.0


@dataclass
class ViewParams:
    """Per-sample parameters of one view of B images (CPU tensors; the ops move what they need).

    boxes (B, 4) int64 (top, left, height, width); flip, jitter_on, gray, blur_on, solarize (B,) bool;
    jitter_factors (B, 4) float64 (brightness, contrast, saturation, hue; the identity where an op is absent);
    jitter_order (B, 4) int64, a permutation of the op ids per sample; sigma (B,) float64.
    """

    boxes: Tensor
    flip: Tensor
    jitter_on: Tensor
    jitter_factors: Tensor
    jitter_order: Tensor
    gray: Tensor
    blur_on: Tensor
    sigma: Tensor
    solarize: Tensor

    def __getitem__(self, rows: slice) -> ViewParams:
        """The parameters of samples ``rows`` (a chunk of the batch)."""
        return ViewParams(**{k: v[rows] for k, v in vars(self).items()})


def uniform(g: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    """U[low, high) in float64 on CPU: ``shape``."""
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


def bernoulli(g: torch.Generator, n: int, p: float) -> Tensor:
    """(n,) bool, True with probability p (torchvision applies iff ``rand < p``)."""
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def sample_crop_boxes(g: torch.Generator, n: int, height: int | Tensor, width: int | Tensor,
                      scale: Range, ratio: Range = RATIO, tries: int = 10) -> Tensor:
    """RandomResizedCrop boxes, torchvision's ``make_params`` vectorised: (n, 4) int64 (top, left, h, w).

    height, width: ints or (n,) tensors (per-sample sizes of a padded batch). All ``tries`` draws are made up
    front; they are independent, so the first fitting one has torchvision's distribution.
    """
    H = torch.as_tensor(height, dtype=torch.float64).expand(n)[:, None]
    W = torch.as_tensor(width, dtype=torch.float64).expand(n)[:, None]
    area = H * W * uniform(g, (n, tries), *scale)
    aspect = torch.exp(uniform(g, (n, tries), math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).round()  # torch.round is half-to-even like Python's round
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # index of the first fitting try
    w, h = w.gather(1, first), h.gather(1, first)
    u = torch.rand((n, 2), generator=g, dtype=torch.float64)
    top = (u[:, :1] * (H - h + 1)).floor()  # randint(0, H - h + 1)
    left = (u[:, 1:] * (W - w + 1)).floor()

    # Fallback: central crop of the whole image, its aspect ratio clamped into ``ratio``.
    in_ratio = W / H
    fw = torch.where(in_ratio > ratio[1], (H * ratio[1]).round(), W)
    fh = torch.where(in_ratio < ratio[0], (W / ratio[0]).round(), H)
    ok = fits.any(1, keepdim=True)
    h, w = torch.where(ok, h, fh), torch.where(ok, w, fw)
    top = torch.where(ok, top, ((H - fh) / 2).floor())
    left = torch.where(ok, left, ((W - fw) / 2).floor())
    return torch.cat([top, left, h, w], 1).long()


def sample_jitter(g: torch.Generator, n: int, ranges: tuple[Range | None, ...]) -> tuple[Tensor, Tensor]:
    """ColorJitter factors (n, 4) float64 (identity where a range is None) and per-sample op orders (n, 4)."""
    order = torch.rand((n, 4), generator=g).argsort(1)  # argsort of iid uniforms: a uniform permutation
    factors = torch.stack([uniform(g, (n,), *r) if r is not None else torch.full((n,), IDENTITY[i],
                                                                                  dtype=torch.float64)
                           for i, r in enumerate(ranges)], 1)
    return factors, order


def sample_view(g: torch.Generator, spec: ViewSpec, n: int, height: int | Tensor, width: int | Tensor
                ) -> ViewParams:
    """All per-sample parameters of one view for n images of size (height, width)."""
    factors, order = sample_jitter(g, n, spec.jitter)
    has_jitter = any(r is not None for r in spec.jitter)
    return ViewParams(
        boxes=sample_crop_boxes(g, n, height, width, spec.scale, spec.ratio),
        flip=bernoulli(g, n, spec.flip_p),
        jitter_on=bernoulli(g, n, spec.jitter_p if has_jitter else 0.0),
        jitter_factors=factors, jitter_order=order,
        gray=bernoulli(g, n, spec.gray_p),
        blur_on=bernoulli(g, n, spec.blur_p if spec.blur_kernel > 1 else 0.0),
        sigma=uniform(g, (n,), *spec.blur_sigma),
        solarize=bernoulli(g, n, spec.solarize_p),
    )
