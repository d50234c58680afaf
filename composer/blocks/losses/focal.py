"""GLIP's grounding losses (Li et al. 2022, arXiv:2112.03857): the token sigmoid focal loss as a block, and the
ATSS box-regression pieces (GIoU loss, centerness target) as plain functions for the GLIP graph.

Official code: microsoft/GLIP · maskrcnn_benchmark/layers/sigmoid_focal_loss.py ·
token_sigmoid_binary_focal_loss and TokenSigmoidFocalLoss (``loss.sum()``); modeling/rpn/loss.py ·
ATSSLossComputation.__call__ (normaliser), GIoULoss and compute_centerness_targets::

    keep (anchor, token) pairs where text_mask > 0
    p = sigmoid(x); ce = BCEWithLogits(x, y); p_t = p*y + (1-p)*(1-y)
    loss = (alpha*y + (1-alpha)*(1-y)) * (1 - p_t)**gamma * ce          # summed
    num_pos_avg_per_gpu = max(reduce_sum(#positive anchors) / world_size, 1)
    dot_product_token_loss = loss / num_pos_avg_per_gpu
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime import collectives
from composer.runtime.precision import float32_region


@block("loss.token_focal")
class TokenSigmoidFocalLoss(nn.Module):
    """GLIP: binary focal loss on every (anchor, real token) logit, normalised by the positive anchors.

    Padded token positions (``text_mask == 0``) are excluded. The sum is divided by
    ``max(P / W, 1)`` where P is the number of positive anchors on all W processes
    (``composer.runtime.collectives.all_reduce_sum``), so DDP's mean reproduces one process's ``sum / max(P, 1)`` whenever
    P >= W. Padded pairs are zeroed with ``where`` instead of GLIP's ``masked_select`` so the shapes stay
    static under ``torch.compile``; the sum is the same. Computed in float32 even under autocast.

    Args:
        alpha: weight of positive pairs, 0.25 (GLIP ``MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA``; configs/pretrain/
            glip_Swin_T_O365.yaml). A negative value disables the alpha weighting, as in GLIP.
        gamma: focusing exponent, 2.0 (``TOKEN_GAMMA``, same config).

    Inputs:
        logits: (B, A, T) anchor-token alignment logits (all FPN levels concatenated).
        targets: (B, A, T) binary targets: an anchor matched to a box has its phrase's tokens set; an unmatched
            anchor has only the last position ("no object", GLIP ``unmatched_labels[-1] = 1``).
        text_mask: (B, T) 1 for a real token, 0 for padding.
        positive: (B, A) optional, 1 for anchors assigned to a box (ATSS ``labels > 0``). Default: anchors with
            a target outside the last ("no object") position.
    """

    collapse_guard = "supervised targets (boxes and phrases)"  # fixed targets cannot collapse (composer.graph.collapse)

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if not alpha <= 1:
            raise ValueError(f"loss.token_focal: alpha must be <= 1 (negative disables it), got {alpha}")
        if not gamma >= 0:
            raise ValueError(f"loss.token_focal: gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma = float(alpha), float(gamma)

    def forward(self, logits: Tensor, targets: Tensor, text_mask: Tensor, positive: Tensor | None = None) -> Tensor:
        if logits.ndim != 3 or targets.shape != logits.shape or text_mask.shape != (logits.shape[0], logits.shape[2]):
            raise ValueError(f"loss.token_focal: expected logits and targets (B, A, T) and text_mask (B, T); got "
                             f"{tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(text_mask.shape)}")
        with float32_region(logits.device):
            y = targets.float()
            pair_loss = sigmoid_focal_loss(logits.float(), y, self.alpha, self.gamma)  # (B, A, T)
            keep = (text_mask > 0)[:, None, :]  # (B, 1, T), broadcast over anchors
            total = torch.where(keep, pair_loss, torch.zeros_like(pair_loss)).sum()
            if positive is None:
                positive = (y[..., :-1] > 0).any(dim=-1)  # the last position is GLIP's "no object" token
            num_pos = collectives.all_reduce_sum((positive > 0).sum().float().detach())
            return total / torch.clamp(num_pos / collectives.world_size(), min=1.0)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise binary focal loss (RetinaNet; fvcore's form, as GLIP copies it), no reduction.

    ``alpha_t * (1 - p_t)**gamma * BCEWithLogits(x, y)`` with ``p_t = p*y + (1-p)(1-y)`` and
    ``alpha_t = alpha*y + (1-alpha)(1-y)``; ``alpha < 0`` drops the alpha weighting.
    At x = 0: y = 1 gives 0.043322, y = 0 gives 0.129965.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss
