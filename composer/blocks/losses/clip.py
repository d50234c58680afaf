"""CLIP's symmetric image-text contrastive loss (Radford et al. 2021, arXiv:2103.00020), in open_clip's
``local_loss=True, gather_with_grad=True`` form.

Official code: openai/CLIP · clip/model.py · CLIP.forward (normalise, ``logit_scale.exp()``); training code is
mlfoundations/open_clip · src/open_clip/loss.py · ClipLoss.forward and gather_features::

    all_I, all_T = all_gather_with_grad(I), all_gather_with_grad(T)      # (G, E)
    logits_per_image = scale * I @ all_T.T                                # (N, G)
    logits_per_text  = scale * T @ all_I.T                                # (N, G)
    labels = arange(N) + N * rank
    loss = (CE(logits_per_image, labels) + CE(logits_per_text, labels)) / 2

On one process this is the global CLIP loss. With W processes, each rank's loss is its rows' share and the
gather's backward returns every rank's gradient to the features' owner, so DDP's gradient mean equals the
single-process gradient on the concatenated batch (open_clip README "Multi-GPU and Beyond"; issue #894). The
default open_clip mode (gradient-free gather, full G x G matrix on every rank) gives the same loss but 1/W of
the gradient through DDP; it is not offered.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime import collectives
from composer.runtime.precision import float32_region


@block("loss.clip")
class CLIPLoss(nn.Module):
    """CLIP: each image classifies its caption among all G captions, and each caption its image.

    Features are L2-normalised here (``F.normalize``, as open_clip's ``encode_image(normalize=True)``); the
    scale is ``exp(logit_scale)`` with ``logit_scale`` the learnable log-scale from an ``ops.scalar`` block
    (init ln(1/0.07) = 2.659260, clamped to [0, ln 100] after each step by that block). An optional
    ``logit_bias`` is added to both logit matrices (open_clip ``ClipLoss`` with ``logit_bias``). Computed in
    float32 even under autocast.

    Inputs:
        image: (N, E) image embeddings.
        text: (N, E) text embeddings of the matching captions (row i describes image i).
        logit_scale: () log of the logit scale (the loss uses its exponential).
        logit_bias: () optional additive logit bias; default none.
    """

    collapse_guard = "negatives"  # the loss is its own guard against collapse (composer.graph.collapse)

    def forward(self, image: Tensor, text: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None) -> Tensor:
        if image.ndim != 2 or image.shape != text.shape:
            raise ValueError(f"loss.clip: expected image and text (N, E), got {tuple(image.shape)} and "
                             f"{tuple(text.shape)}")
        with float32_region(image.device):
            img = F.normalize(image.float(), dim=-1)
            txt = F.normalize(text.float(), dim=-1)
            scale = logit_scale.float().exp()
            all_img = collectives.gather_with_grad(img)  # (G, E); backward sums every rank's gradient into our rows
            all_txt = collectives.gather_with_grad(txt)
            logits_per_image = scale * img @ all_txt.T  # (N, G)
            logits_per_text = scale * txt @ all_img.T  # (N, G)
            if logit_bias is not None:
                logits_per_image = logits_per_image + logit_bias.float()
                logits_per_text = logits_per_text + logit_bias.float()
            n = img.shape[0]
            labels = torch.arange(n, device=img.device) + n * collectives.rank()
            return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
