"""MAE's pixel reconstruction loss (He et al. 2021, arXiv:2111.06377).

Official code: facebookresearch/mae · models_mae.py · MaskedAutoencoderViT.forward_loss::

    target = patchify(imgs)                                  # (N, L, p*p*3), order (h, w, p, q, c)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)               # torch.var: UNBIASED (divides by n-1)
        target = (target - mean) / (var + 1.e-6) ** .5
    loss = ((pred - target) ** 2).mean(dim=-1)               # (N, L) per-patch mean
    loss = (loss * mask).sum() / mask.sum()                  # mean over removed patches only
"""
from __future__ import annotations

from torch import Tensor, nn

from composer.blocks.registry import block
from composer.blocks.vit import patchify
from composer.runtime.precision import float32_region


@block("loss.mae")
class MAELoss(nn.Module):
    """Mean squared error on the removed patches, against per-patch normalised pixels.

    The patch size is read from the shapes (``pred``'s last axis is p²·C). Computed in float32.

    Args:
        norm_pix: normalise each target patch by its mean and unbiased variance (True, ``PRETRAIN.md``
            ``--norm_pix_loss``; the paper's best setting).
        eps: added to the variance (1e-6, ``forward_loss``).

    Inputs:
        pred: (B, L, p²·C) decoder output in patchify order (``head.mae_decoder``).
        image: (B, C, H, W) the encoder's input image.
        mask: (B, L) 1 = removed (``mask.random``'s mask); the loss averages over these patches.
    """

    collapse_guard = "a reconstruction target"  # a fixed target cannot collapse (composer.graph.collapse)

    def __init__(self, *, norm_pix: bool = True, eps: float = 1e-6):
        super().__init__()
        if eps < 0:
            raise ValueError(f"loss.mae: eps must be >= 0, got {eps}")
        self.norm_pix, self.eps = norm_pix, eps

    def forward(self, pred: Tensor, image: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = image.shape
        p = round((pred.shape[-1] / c) ** 0.5)
        if pred.ndim != 3 or p * p * c != pred.shape[-1] or (h // p) * (w // p) != pred.shape[1] \
                or mask.shape != pred.shape[:2]:
            raise ValueError(f"loss.mae: expected pred (B, L, p²·C), image (B, C, H, W), mask (B, L) with "
                             f"L = (H/p)(W/p); got {tuple(pred.shape)}, {tuple(image.shape)}, {tuple(mask.shape)}")
        with float32_region(pred.device):
            target = patchify(image.float(), p)
            if self.norm_pix:
                mean = target.mean(dim=-1, keepdim=True)
                var = target.var(dim=-1, keepdim=True)  # unbiased, as torch.var in the official code
                target = (target - mean) / (var + self.eps) ** 0.5
            per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # (B, L)
            mask = mask.float()
            return (per_patch * mask).sum() / mask.sum()
