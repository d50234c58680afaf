"""The CPU path of one view: every op of an image runs in place while the image is in cache.

On a CPU the batched kernels of ``ops`` stream the whole batch through memory once per op (16 images of
3×224×224 float32 are 9.6 MB), allocate a new tensor per op and gather/scatter the samples an op applies to.
Here each image (600 kB) is cropped into its slot of the output and then jittered, greyed, blurred,
solarised and normalised in place, so it stays in the core's cache across the ~30 passes of a recipe; the
per-image Python overhead (~40 small calls) is far below the memory traffic saved. Same formulas and the same
parameters as ``ops`` (tests/blocks/test_augment_batched.py checks the two against each other: 1e-4 after
normalisation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from composer.blocks.augment_batched.ops import GRAY_WEIGHTS, gaussian_kernels
from composer.blocks.augment_batched.params import BRIGHTNESS, CONTRAST, HUE, IDENTITY, SATURATION, ViewParams


def gray(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma of one float image (3, H, W): (1, H, W)."""
    return torch.add(x[0] * GRAY_WEIGHTS[0], x[1], alpha=GRAY_WEIGHTS[1]).add_(x[2], alpha=GRAY_WEIGHTS[2])[None]


def hue(x: Tensor, f: float) -> Tensor:
    """``ops.adjust_hue`` on one image (3, H, W), in place: the closed-form HSV rotation by f turns."""
    r, g, b = x
    maxc, minc = x.amax(0), x.amin(0)  # two reductions: faster than aminmax on CPU here
    d = maxc - minc
    safe = torch.where(d > 0, d, 1.0)
    h6 = torch.where(maxc == r, (g - b).div_(safe),
                     torch.where(maxc == g, (b - r).div_(safe).add_(2), (r - g).div_(safe).add_(4)))
    h6.add_(6 * f)
    k, t = torch.empty_like(h6), torch.empty_like(h6)
    for c, n in enumerate((5.0, 3.0, 1.0)):  # every read of r, g, b is done: channels can be overwritten
        torch.remainder(h6 + n, 6, out=k)
        torch.neg(k, out=t).add_(4)
        torch.minimum(k, t, out=k).clamp_(0, 1)
        torch.sub(maxc, k.mul_(d), out=x[c])
    return x


def jitter(x: Tensor, factors: list[float], order: list[int]) -> Tensor:
    """ColorJitter on one image in place, ops in ``order``, skipping identity factors (as ``ops.color_jitter``)."""
    for op in order:
        f = factors[op]
        if f == IDENTITY[op]:
            continue
        if op == BRIGHTNESS:
            x.mul_(f).clamp_(0, 1)
        elif op == CONTRAST:
            m = float(gray(x).mean())
            x.mul_(f).add_(m * (1 - f)).clamp_(0, 1)
        elif op == SATURATION:
            g = gray(x)
            x.mul_(f).add_(g, alpha=1 - f).clamp_(0, 1)
        elif op == HUE:
            hue(x, f)
    return x


def blur(x: Tensor, kernel1d: Tensor) -> Tensor:
    """Separable Gaussian blur of one image (3, H, W) in place, reflect padding; kernel1d (k,) float32.

    Each pass is k shifted multiply-adds of the cached image: 4-5x faster here than torch's CPU depthwise
    ``conv2d`` on one image, and the same sums in the same order (equal to ``ops.gaussian_blur``).
    """
    k, (h, w) = len(kernel1d), x.shape[-2:]
    p, taps = k // 2, kernel1d.tolist()
    padded = F.pad(x[None], (p, p, p, p), mode="reflect")[0]
    rows = padded[:, 0:h, :] * taps[0]  # vertical pass: (3, H, W + 2p)
    for j in range(1, k):
        rows.add_(padded[:, j:j + h, :], alpha=taps[j])
    torch.mul(rows[:, :, 0:w], taps[0], out=x)  # horizontal pass, written into the image
    for j in range(1, k):
        x.add_(rows[:, :, j:j + w], alpha=taps[j])
    return x


def apply_view_into(out: Tensor, images: Tensor, size: int, interpolation: str, blur_kernel: int,
                    params: ViewParams, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """One view of (B, 3, H, W) uint8 CPU images, normalised, written into ``out`` (B, 3, S, S) float32."""
    kernels = gaussian_kernels(params.sigma, blur_kernel) if blur_kernel > 1 and params.blur_on.any() else None
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    inv_s = 1 / torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    boxes, factors, orders = params.boxes.tolist(), params.jitter_factors.tolist(), params.jitter_order.tolist()
    flip, jit, grey = params.flip.tolist(), params.jitter_on.tolist(), params.gray.tolist()
    blur_on, sol = params.blur_on.tolist(), params.solarize.tolist()
    for i, (t, l, h, w) in enumerate(boxes):
        x = out[i]
        crop = images[i:i + 1, :, t:t + h, l:l + w]
        if (h, w) != (size, size):  # torch's uint8 AVX2 antialias kernel, as torchvision (bit-exact)
            crop = F.interpolate(crop, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
        x.copy_(crop[0].flip(-1) if flip[i] else crop[0]).mul_(1 / 255)
        if jit[i]:
            jitter(x, factors[i], orders[i])
        if grey[i]:
            x.copy_(gray(x).expand(3, -1, -1))
        if kernels is not None and blur_on[i]:
            blur(x, kernels[i])
        if sol[i]:
            x.copy_(torch.where(x >= 0.5, 1 - x, x))  # threshold 127.5/255: the uint8 rule (see ops)
        x.sub_(m).mul_(inv_s)
    return out
