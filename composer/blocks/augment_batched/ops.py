"""Batched image operations with per-sample parameters (pure torch, any device).

Each function takes a batch ``(B, C, H, W)`` and per-sample parameters (``(B,)`` CPU tensors from
``params.sample_view``) and equals the matching ``torchvision.transforms.v2.functional`` call made sample by
sample, within the tolerances stated in tests/blocks/test_augment_batched.py: after the crop everything is float32
in [0, 1], clamped after each colour op as torchvision does for float images; torchvision's uint8 path instead
rounds or truncates to uint8 after every op (a few levels at most, never a different parameter).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from composer.blocks.augment_batched.params import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    IDENTITY,
    SATURATION,
)

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, torchvision's rgb_to_grayscale constants


# ---------------------------------------------------------------------------------------------- crop + resize
def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """(B,) factors as a float32 (B, 1, 1, 1) tensor on x's device, to broadcast over (B, C, H, W)."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] → float32 [0, 1] (torchvision ``to_dtype(scale=True)``); float input passes through."""
    return x.to(torch.float32).mul_(1 / 255) if x.dtype == torch.uint8 else x.to(torch.float32)


def resized_crop_loop(x: Tensor, boxes: Tensor, size: int, interpolation: str = "bilinear") -> Tensor:
    """Crop + antialiased resize, one ``F.interpolate`` call per sample on the crop slice: (B, 3, S, S) float.

    Bit-identical to ``v2.functional.resized_crop(..., antialias=True)`` (same kernel, uint8 kept native), and
    the fastest option on CPU (torch's AVX2 uint8 antialias kernels); on CUDA it costs a launch per sample.
    """
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype, device=x.device)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        crop = x[i:i + 1, :, t:t + h, l:l + w]
        if (h, w) == (size, size):  # torchvision returns the crop unchanged
            out[i] = crop[0]
            continue
        src = crop if x.dtype == torch.uint8 and x.device.type == "cpu" else crop.float()
        y = F.interpolate(src, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
        if y.dtype != out.dtype:  # non-native uint8 (CUDA): torchvision clamps and rounds
            y = y.clamp_(0, 255).round_()
        out[i] = y[0]
    return to_unit_float(out)


def _aa_filter(t: Tensor, interpolation: str) -> Tensor:
    """PIL-style filters of torch's antialias kernels: triangle, or Keys cubic with a = −0.5 (not −0.75)."""
    t = t.abs()
    if interpolation == "bilinear":
        return (1 - t).clamp_(min=0)
    a = -0.5
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resize_matrix(offset: Tensor, length: Tensor, n_in: int, size: int, interpolation: str = "bilinear"
                  ) -> Tensor:
    """Per-sample 1-D antialiased resampling matrices: (B, size, n_in) float32.

    Row i maps input pixels [offset, offset + length) of an axis of n_in pixels to output pixel i with the
    weights of torch's ``interpolate(antialias=True, align_corners=False)``: filter support widened by the
    downscale factor, taps outside the crop dropped and the rest renormalised (= the crop's edge handling).
    offset, length: (B,) integer tensors.
    """
    length = length.to(torch.float64).view(-1, 1, 1)
    scale = length / size
    support = (1.0 if interpolation == "bilinear" else 2.0) * scale.clamp(min=1)
    center = scale * (torch.arange(size, dtype=torch.float64, device=length.device).view(1, -1, 1) + 0.5)
    p = torch.arange(n_in, dtype=torch.float64, device=length.device).view(1, 1, -1) - offset.view(-1, 1, 1)
    lo = (center - support + 0.5).trunc().clamp(min=0)  # torch's xmin/xmax tap window
    hi = torch.minimum((center + support + 0.5).trunc(), length)
    w = _aa_filter((p + 0.5 - center) / scale.clamp(min=1), interpolation) * ((p >= lo) & (p < hi))
    return (w / w.sum(-1, keepdim=True)).float()


def resized_crop_matmul(x: Tensor, boxes: Tensor, size: int, interpolation: str = "bilinear",
                        flip: Tensor | None = None) -> Tensor:
    """Crop + antialiased resize as two batched matmuls ``Ry @ X @ Rxᵀ``: (B, 3, S, S) float32 in [0, 1].

    Same weights as torchvision (float, no uint8 rounding); a flip reverses Rx's rows for free. Dense, so it
    costs 2·3·S·(H·W + W·S) FLOPs per image: cheap on a GPU, too slow on this CPU (see bench.py).
    """
    boxes = boxes.to(x.device)
    ry = resize_matrix(boxes[:, 0], boxes[:, 2], x.shape[-2], size, interpolation)
    rx = resize_matrix(boxes[:, 1], boxes[:, 3], x.shape[-1], size, interpolation)
    if flip is not None:
        rx = torch.where(flip.to(x.device).view(-1, 1, 1), rx.flip(1), rx)
    out = ry.unsqueeze(1) @ to_unit_float(x) @ rx.transpose(1, 2).unsqueeze(1)
    return out.clamp_(0, 1)  # bicubic overshoot; the uint8 reference clamps too


def hflip(x: Tensor, mask: Tensor) -> Tensor:
    """Flip the samples where mask (B,) is True along the width: (B, C, H, W), in place."""
    idx = mask.nonzero().flatten().to(x.device)
    if len(idx):
        x[idx] = x[idx].flip(-1)
    return x


# ---------------------------------------------------------------------------------------------- colour
def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma of float (B, 3, H, W): (B, 1, H, W) (torchvision weights, no rounding)."""
    r, g, b = x.unbind(1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``_blend``: factor·x + (1 − factor)·other, clamped to [0, 1]; factor (B, 1, 1, 1)."""
    return (x * factor).add_(other * (1 - factor)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """x·f clamped: (B, 3, H, W) float, factor (B,)."""
    return (x * _per_sample(factor, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-image mean of the grayscale image (a scalar per sample): (B, 3, H, W), factor (B,)."""
    mean = grayscale(x).mean((1, 2, 3), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grayscale image: (B, 3, H, W), factor (B,)."""
    return _blend(x, grayscale(x), _per_sample(factor, x))


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Rotate the hue by factor (B,) turns in [−0.5, 0.5]: (B, 3, H, W) float in [0, 1].

    Same HSV model as torchvision (Pillow's), without materialising HSV: with v = max, d = max − min and the
    hue h6 ∈ [0, 6) (sextants), channel n ∈ (5, 3, 1) for (r, g, b) is v − d·clamp(min(k, 4 − k), 0, 1) where
    k = (n + h6) mod 6, the closed form of the piecewise hsv→rgb table (v·s = d).
    """
    r, g, b = x.unbind(1)
    minc, maxc = x.aminmax(dim=1)
    d = maxc - minc
    safe = torch.where(d > 0, d, torch.ones_like(d))  # grey pixels: d = 0 gives v for every channel anyway
    h6 = torch.where(maxc == r, (g - b) / safe,
                     torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h6 = h6 + 6 * factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6)
        out.append(maxc - d * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(out, 1)


_JITTER_OPS = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast, SATURATION: adjust_saturation,
               HUE: adjust_hue}


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, on: Tensor) -> Tensor:
    """ColorJitter with per-sample factors (B, 4) and orders (B, 4), on the samples where on (B,) is True.

    At each of the 4 steps each op runs once, on the samples that put it at that step (total work = one pass
    of each op over the jittered samples); ops whose factor is the identity are skipped, as torchvision skips
    a zero strength. x: (B, 3, H, W) float in [0, 1], updated in place and returned.
    """
    for step in range(4):
        for op, fn in _JITTER_OPS.items():
            sel = on & (order[:, step] == op) & (factors[:, op] != IDENTITY[op])
            idx = sel.nonzero().flatten()
            if len(idx):
                d = idx.to(x.device)
                x[d] = fn(x[d], factors[idx, op])
    return x


def apply_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """RandomGrayscale: 3-channel luma where mask (B,) is True; (B, 3, H, W), in place."""
    idx = mask.nonzero().flatten().to(x.device)
    if len(idx):
        x[idx] = grayscale(x[idx]).expand(-1, 3, -1, -1)
    return x


def gaussian_kernels(sigma: Tensor, kernel: int) -> Tensor:
    """Normalised 1-D Gaussians exp(−t²/2σ²), t = −k//2 … k//2 (torchvision's kernel): (B, kernel) float32."""
    t = torch.arange(kernel, dtype=torch.float64) - kernel // 2
    w = torch.exp(-(t / sigma.to(torch.float64).view(-1, 1)) ** 2 / 2)
    return (w / w.sum(1, keepdim=True)).float()


def gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Per-sample Gaussian blur, separable, reflect padding (as v2.functional.gaussian_blur): (B, C, H, W).

    sigma (B,). The two 1-D passes are depthwise convolutions over the B·C channels (groups = B·C), each
    channel with its sample's kernel; separable = 2k instead of k² taps (torchvision convolves in 2-D).
    channels_last puts the B·C channels innermost, where CPU depthwise conv vectorises (2.4x faster here).
    """
    n, c, h, w = x.shape
    k1 = gaussian_kernels(sigma, kernel).to(x.device).repeat_interleave(c, 0)  # (B·C, k)
    pad = kernel // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = y.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(y, k1.view(n * c, 1, kernel, 1), groups=n * c)
    y = F.conv2d(y, k1.view(n * c, 1, 1, kernel), groups=n * c)
    return y.reshape(n, c, h, w)


def apply_blur(x: Tensor, sigma: Tensor, kernel: int, mask: Tensor) -> Tensor:
    """RandomApply(GaussianBlur(kernel, sigma)) on the samples where mask (B,) is True; in place."""
    idx = mask.nonzero().flatten()
    if len(idx) and kernel > 1:
        d = idx.to(x.device)
        x[d] = gaussian_blur(x[d], sigma[idx], kernel)
    return x


def apply_solarize(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """RandomSolarize: x ≥ threshold → 1 − x where mask (B,) is True: a new (B, C, H, W) tensor.

    PIL/torchvision solarize uint8 at 128 (DINO, MoCo v3: 127 stays, 128 inverts). 0.5 = 127.5/255 sits
    halfway between those levels, so it gives the same rule on x/255 whatever the float rounding of x.
    """
    m = mask.to(x.device).view(-1, 1, 1, 1)
    if mask.any():  # one masked pass: cheaper than gathering and scattering the selected samples
        x = torch.where(m & (x >= threshold), 1 - x, x)
    return x


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(x − mean) / std per channel: (B, 3, H, W), in place."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
