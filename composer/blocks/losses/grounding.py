"""GLIP's box losses on ATSS positives (Li, Zhang et al. 2022, arXiv:2112.03857): centerness-weighted GIoU and
centerness BCE.

Official code: microsoft/GLIP · maskrcnn_benchmark/modeling/rpn/loss.py · ATSSLossComputation.__call__::

    num_pos_avg_per_gpu = max(reduce_sum(#positives) / W, 1)
    sum_centerness_targets_avg_per_gpu = reduce_sum(centerness_targets.sum()) / W
    reg_loss = GIoULoss(decode(pred), decode(target), weight=centerness_targets) / sum_centerness_targets_avg
    centerness_loss = BCEWithLogits(centerness, centerness_targets, reduction="sum") / num_pos_avg_per_gpu
    total = ... + reg_loss * MODEL.ATSS.REG_LOSS_WEIGHT (2.0) + centerness_loss

Both normalisers are all-reduced over processes and divided by W, so DDP's gradient mean over ranks equals one
process's gradient on the whole batch. Negatives are zeroed with ``where`` rather than selected, so shapes stay
static under ``torch.compile`` (the sums are the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.boxes import decode_boxes, giou_loss
from composer.blocks.registry import block
from composer.runtime import collectives
from composer.runtime.precision import float32_region


def _check(kind: str, regression: Tensor, positive: Tensor) -> None:
    if regression.ndim != 3 or regression.shape[-1] != 4 or positive.shape != regression.shape[:2]:
        raise ValueError(f"{kind}: expected regression (B, A, 4) and positive (B, A), got "
                         f"{tuple(regression.shape)} and {tuple(positive.shape)}")


@block("loss.giou")
class GIoULoss(nn.Module):
    """GLIP/ATSS box regression: ``sum_pos c_i (1 - GIoU(decode(pred_i), box_i)) / (sum of c over all ranks / W)``
    with ``c`` the centerness targets. Weight it 2.0 in the objective (GLIP MODEL.ATSS.REG_LOSS_WEIGHT).

    Zero (with a gradient path) when no process has a positive anchor, as GLIP's ``box_regression.sum()`` over an
    empty selection. Computed in float32.

    Inputs:
        regression: (B, A, 4) predicted box codes (``head.glip``).
        anchors: (A, 4) anchors xyxy (``targets.atss``).
        boxes: (B, A, 4) assigned boxes xyxy.
        positive: (B, A) 1 for positive anchors.
        centerness: (B, A) centerness targets (the weights).
    """

    def forward(self, regression: Tensor, anchors: Tensor, boxes: Tensor, positive: Tensor,
                centerness: Tensor) -> Tensor:
        _check("loss.giou", regression, positive)
        with float32_region(regression.device):
            pred = decode_boxes(regression.float(), anchors.float()[None])  # (B, A, 4)
            per_anchor = giou_loss(pred.reshape(-1, 4), boxes.float().reshape(-1, 4)).reshape(positive.shape)
            weight = torch.where(positive > 0, centerness.float(), torch.zeros_like(per_anchor))
            total = (per_anchor * weight).sum()
            norm = collectives.all_reduce_sum(weight.sum().detach()) / collectives.world_size()
            return torch.where(norm > 0, total / norm.clamp(min=1e-12), regression.sum() * 0.0)


@block("loss.centerness")
class CenternessLoss(nn.Module):
    """FCOS/ATSS centerness: ``sum_pos BCEWithLogits(pred_i, c_i) / max(#positives over ranks / W, 1)``.

    Computed in float32.

    Inputs:
        centerness: (B, A) predicted centerness logits (``head.glip``).
        target: (B, A) centerness targets in [0, 1] (``targets.atss``).
        positive: (B, A) 1 for positive anchors.
    """

    def forward(self, centerness: Tensor, target: Tensor, positive: Tensor) -> Tensor:
        if centerness.shape != target.shape or centerness.shape != positive.shape or centerness.ndim != 2:
            raise ValueError(f"loss.centerness: expected centerness, target and positive (B, A), got "
                             f"{tuple(centerness.shape)}, {tuple(target.shape)}, {tuple(positive.shape)}")
        with float32_region(centerness.device):
            bce = F.binary_cross_entropy_with_logits(centerness.float(), target.float(), reduction="none")
            total = torch.where(positive > 0, bce, torch.zeros_like(bce)).sum()
            num_pos = collectives.all_reduce_sum((positive > 0).sum().float().detach())
            return total / torch.clamp(num_pos / collectives.world_size(), min=1.0)
