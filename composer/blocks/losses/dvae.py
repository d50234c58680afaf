"""The discrete VAE's training loss: reconstruction plus a KL pull towards the uniform prior.

Official code: microsoft/unilm · beit/modeling_discrete_vae.py · DiscreteVAE.forward (after lucidrains'
DALLE-pytorch)::

    recon_loss = F.mse_loss(img, out)                              # mean over every pixel value
    logits = rearrange(logits, 'b n h w -> b (h w) n')
    log_qy = torch.log(softmax(logits, -1) + 1e-10)
    kl_div = F.kl_div(log(1/num_tokens), log_qy, None, None, 'batchmean', log_target=True)
    loss = recon_loss + kl_div * kl_div_loss_weight                # weight 0 by default

There ``'batchmean'`` divides by the size of the one-element log-uniform tensor, so the KL is summed over the
batch and the grid; here it is averaged over the B·h·w code positions (the mean KL(q‖uniform) per position),
which makes ``kl_weight`` independent of batch size and image size. With BEiT's default weight 0 both agree.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime.precision import float32_region


@block("loss.dvae")
class DVAELoss(nn.Module):
    """``MSE(recon, image) + kl_weight · mean_{positions} KL(softmax(logits) ‖ uniform)``, in float32.

    Args:
        kl_weight: weight of the KL term (0.0, ``DiscreteVAE(kl_div_loss_weight=0.)``; DALL-E's paper raises
            it to 6.6 over training, with the per-image sum convention).

    Inputs:
        recon: (B, C, T, T) the decoder output (``tokenizer.dvae``'s ``recon``).
        image: (B, C, T, T) the input image.
        logits: (B, K, h, w) the encoder logits (``tokenizer.dvae``'s ``logits``).
    """

    collapse_guard = "a reconstruction target"  # a fixed target cannot collapse (composer.graph.collapse)

    def __init__(self, *, kl_weight: float = 0.0):
        super().__init__()
        if kl_weight < 0:
            raise ValueError(f"loss.dvae: kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = kl_weight

    def forward(self, recon: Tensor, image: Tensor, logits: Tensor) -> Tensor:
        if recon.shape != image.shape or logits.ndim != 4 or logits.shape[0] != image.shape[0]:
            raise ValueError(f"loss.dvae: expected recon and image of one shape (B, C, T, T) and logits "
                             f"(B, K, h, w); got {tuple(recon.shape)}, {tuple(image.shape)}, {tuple(logits.shape)}")
        with float32_region(recon.device):
            loss = F.mse_loss(recon.float(), image.float())
            if self.kl_weight:
                log_q = F.log_softmax(logits.float(), dim=1)  # (B, K, h, w)
                kl = (log_q.exp() * (log_q + math.log(logits.shape[1]))).sum(dim=1).mean()
                loss = loss + self.kl_weight * kl
            return loss
