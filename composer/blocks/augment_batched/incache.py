"""The CPU path of one view: every op of an image runs in place while the image is in cache.

On a CPU the batched kernels of ``ops`` stream the whole batch through memory once per op (16 images of
3×224×224 float32 are 9.6 MB), allocate a new tensor per op and gather/scatter the samples an op applies to.
Here each image (600 kB) is cropped into its slot of the output and then jittered, greyed, blurred,
solarised and normalised in place, so it stays in the core's cache across the ~30 passes of a recipe; the
per-image Python overhead (~40 small calls) is far below the memory traffic saved. The same parameters as
``ops``; where a CPU-friendlier formula gives the same numbers within float32 rounding it is used here (a hue
without ``where``/``remainder``, a matmul blur for small views, solarize as a minimum; see each function).
tests/blocks/test_augment_batched.py checks each op against torchvision (1e-5) and whole views against ``ops``
(1e-4 after normalisation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from composer.blocks.augment_batched.ops import GRAY_WEIGHTS, gaussian_kernels
from composer.blocks.augment_batched.params import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    IDENTITY,
    SATURATION,
    ViewParams,
)


def _c(v: float) -> Tensor:
    """A float32 0-dim constant. A Python number costs a tensor op ~8 µs more on this CPU (torch wraps it in a
    double tensor and converts it on every call, 4 extra dispatches); a float32 0-dim tensor gives the same bits
    (tests compare both) and the op alone, which counts on 96 px crops where each op computes for ~3 µs."""
    return torch.tensor(v, dtype=torch.float32)


_W_RED, _ONE_255 = _c(GRAY_WEIGHTS[0]), _c(1 / 255)


def gray(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma of one float image (3, H, W): (1, H, W)."""
    return torch.add(x[0] * _W_RED, x[1], alpha=GRAY_WEIGHTS[1]).add_(x[2], alpha=GRAY_WEIGHTS[2])[None]


# hue: the channel whose "anti-hue" (where it is the minimum) sits at 3, 5, 1 sextants for r, g, b
_ANTI_HUE = torch.tensor([3.0, 5.0, 1.0]).view(3, 1, 1)
_TINY = torch.finfo(torch.float32).tiny
_ONE, _TWO, _THREE, _FOUR, _SIX, _SIXTH = (_c(v) for v in (1, 2, 3, 4, 6, 1 / 6))


def hue(x: Tensor, f: float, shift: Tensor | None = None) -> Tensor:
    """``ops.adjust_hue`` on one image (3, H, W) in [0, 1], in place: the HSV rotation by f turns, branch-free.

    torchvision (``_rgb_to_hsv`` → shift → ``_hsv_to_rgb``) keeps v = max and v·s = d = max − min and moves the
    hue h6 ∈ [0, 6) (sextants). ``ops.adjust_hue`` picks h6's formula with ``torch.where``; on a CPU ``where``
    and ``remainder`` are 10x slower than arithmetic (unvectorised bool masks), so here both are arithmetic:
    with u = (x − min) / d ∈ [0, 1], exactly 1 on a maximal channel (monotone rounding), floor(u) is the
    max-channel indicator and two ``lerp`` pick h6 (torchvision's priority r > g > b; where two channels tie for
    the maximum their two formulas give the same h6, so the priority never changes a value); the wrap is
    h − 6·floor(h / 6); channel c is v − d·clamp(|3 − |h6 − a_c|| − 1, 0, 1), a_c its anti-hue (the
    piecewise hsv→rgb table in closed form). Within 1.2e-6 of torchvision on float input
    (tests/blocks/test_augment_batched.py), 2-2.5x faster than the ``where`` form. shift: 6·f as a float32
    0-dim tensor when the caller has it (``jitter``), else computed from f.
    """
    maxc, minc = x.amax(0), x.amin(0)
    d = maxc - minc
    x.sub_(minc).div_(d.clamp(min=_TINY))  # grey pixels (d = 0): u = 0 and the result is v whatever h6
    ur, ug, ub = x
    is_r, is_g = x[:2].floor()  # 1 on a maximal channel, else 0
    h6 = torch.sub(ur, ug).add_(_FOUR)  # b is the max: 4 + (r − g) / d
    h6.lerp_(torch.sub(ub, ur).add_(_TWO), is_g).lerp_(torch.sub(ug, ub), is_r)  # g, then r, take precedence
    h6.add_(_c(6 * f) if shift is None else shift)
    h6.sub_(torch.mul(h6, _SIXTH).floor_().mul_(_SIX))  # into [0, 6)
    k = torch.sub(h6, _ANTI_HUE).abs_().sub_(_THREE).abs_().sub_(_ONE).clamp_(0, 1)  # (3, H, W): 1 − channel's u
    return torch.sub(maxc, k.mul_(d), out=x)


def jitter(x: Tensor, factors: list[float], order: list[int], scalars: tuple[Tensor, ...] | None = None) -> Tensor:
    """ColorJitter on one image in place, ops in ``order``, skipping identity factors (as ``ops.color_jitter``).

    scalars: the factors as float32 0-dim tensors, with the hue's as 6·f (``jitter_scalars``); optional.
    """
    t = scalars or jitter_scalars(torch.tensor([factors], dtype=torch.float64))[0]
    for op in order:
        f = factors[op]
        if f == IDENTITY[op]:
            continue
        if op == BRIGHTNESS:
            x.mul_(t[BRIGHTNESS])
            if f > 1:  # x·f ≤ f ≤ 1 otherwise (rounding is monotone): the clamp would change nothing
                x.clamp_(0, 1)
        elif op == CONTRAST:  # the mean of the luma image = the luma of the channel means (one reduction)
            m = sum(w * c for w, c in zip(GRAY_WEIGHTS, x.mean((1, 2)).tolist()))
            x.mul_(t[CONTRAST]).add_(m * (1 - f)).clamp_(0, 1)
        elif op == SATURATION:
            g = gray(x)
            x.mul_(t[SATURATION]).add_(g, alpha=1 - f).clamp_(0, 1)
        elif op == HUE:
            hue(x, f, t[HUE])
    return x


def jitter_scalars(factors: Tensor) -> list[tuple[Tensor, ...]]:
    """(B, 4) float64 jitter factors → per image, 4 float32 0-dim tensors (brightness, contrast, saturation
    factors and 6·hue), made in 2 + B calls for the whole batch instead of one conversion per op."""
    shift = factors * torch.tensor([1.0, 1.0, 1.0, 6.0], dtype=torch.float64)  # 6·f rounded once, as 6 * f
    return [row.unbind(0) for row in shift.to(torch.float32).unbind(0)]


# Blur: below this side two dense matmuls (M @ x @ Mᵀ) beat the shifted multiply-adds (per-op overhead and
# 2k passes against 2·S multiply-adds per pixel in BLAS); measured per image with 13 taps: 0.20 against 0.37 ms
# at 96 px, 0.40 against 0.46 at 128, 0.74 against 0.61 at 160.
MATMUL_BLUR_MAX = 128
# Outer taps whose weights sum to less than 2^-24 are skipped: on [0, 1] images they change no output by more
# than float32's rounding at 1 (small sigmas leave half of a 13-tap kernel below that).
NEGLIGIBLE = 2.0 ** -24


def blur_matrices(kernels: Tensor, size: int) -> Tensor:
    """(n, k) 1-D kernels → (n, S, S) matrices M with M[i, j] = Σ of the taps that reflect padding sends from
    pixel j to pixel i, so ``M @ x @ Mᵀ`` is the separable blur of x (3, S, S) with reflect padding.

    Needs k // 2 < S (a kernel at most as wide as the view, which the augment blocks check).
    """
    n, k = kernels.shape
    src = torch.arange(size).view(-1, 1) + torch.arange(-(k // 2), k // 2 + 1)  # (S, k) source pixel per tap
    src = src.abs()  # reflect at 0: pixel −i reads i
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)  # reflect at S − 1
    m = torch.zeros(n, size, size)
    return m.scatter_add_(2, src.expand(n, -1, -1).contiguous(), kernels[:, None, :].expand(-1, size, -1).contiguous())


def blur(x: Tensor, kernel1d: Tensor, matrix: Tensor | None = None) -> Tensor:
    """Separable Gaussian blur of one image (3, H, W) in place, reflect padding; kernel1d (k,) float32.

    With ``matrix`` (S, S) from ``blur_matrices`` (square images up to ``MATMUL_BLUR_MAX``): two matmuls.
    Otherwise each pass is a shifted multiply-add per tap of the cached image (4-5x faster here than torch's
    CPU depthwise ``conv2d`` on one image), without the outer taps that weigh less than ``NEGLIGIBLE`` together.
    Both equal ``ops.gaussian_blur`` within float32 rounding (other summation order).
    """
    if matrix is not None:
        return torch.matmul(torch.matmul(matrix, x), matrix.T, out=x)
    taps, (h, w) = kernel1d.tolist(), x.shape[-2:]
    p = len(taps) // 2
    while p > 0 and 2 * sum(taps[:1 + len(taps) // 2 - p]) < NEGLIGIBLE:  # drop the outer pair
        p -= 1
    taps = taps[len(taps) // 2 - p:len(taps) // 2 + p + 1]
    k = len(taps)
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
    matrices = {}  # the blurred images' (S, S) matrices, built together (a zeroed (n, S, S) tensor, one scatter)
    if kernels is not None and size <= MATMUL_BLUR_MAX:
        blurred = params.blur_on.nonzero().flatten()
        matrices = dict(zip(blurred.tolist(), blur_matrices(kernels[blurred], size).unbind(0)))
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    inv_s = 1 / torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    boxes, factors, orders = params.boxes.tolist(), params.jitter_factors.tolist(), params.jitter_order.tolist()
    flip, jit, grey = params.flip.tolist(), params.jitter_on.tolist(), params.gray.tolist()
    blur_on, sol = params.blur_on.tolist(), params.solarize.tolist()
    scalars = jitter_scalars(params.jitter_factors) if any(jit) else None
    for i, (t, l, h, w) in enumerate(boxes):
        x = out[i]
        crop = images[i:i + 1, :, t:t + h, l:l + w]
        if (h, w) != (size, size):  # torch's uint8 AVX2 antialias kernel, as torchvision (bit-exact)
            crop = F.interpolate(crop, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
        torch.mul(crop[0].flip(-1) if flip[i] else crop[0], _ONE_255, out=x)  # uint8 → [0, 1], one pass
        if jit[i]:
            jitter(x, factors[i], orders[i], scalars[i])
        if grey[i]:
            x.copy_(gray(x).expand(3, -1, -1))
        if kernels is not None and blur_on[i]:
            blur(x, kernels[i], matrices.get(i))
        if sol[i]:  # x ≥ 0.5 → 1 − x is min(x, 1 − x), exactly (threshold 127.5/255: the uint8 rule, see ops)
            torch.minimum(x, torch.rsub(x, 1), out=x)
        x.sub_(m).mul_(inv_s)  # (torch.addcmul in one op is 4x slower here)
    return out
