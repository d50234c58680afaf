"""Box geometry shared by GLIP's blocks and losses: the ATSS box coder, GIoU, and the centerness target.

Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates. Official code: microsoft/GLIP,
maskrcnn_benchmark/modeling/box_coder.py and modeling/rpn/atss.py · BoxCoder (weights (10, 10, 5, 5), exp clamp
log(1000/16)), modeling/rpn/loss.py · GIoULoss and compute_centerness_targets.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # atss.py · BoxCoder (wx, wy, ww, wh)
BOX_CLIP = math.log(1000.0 / 16)  # largest dw/dh before exp()


def encode_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Regression targets (dx, dy, dw, dh) of ``boxes`` (..., 4) relative to ``anchors`` (..., 4)."""
    wa, ha = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    xa, ya = (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    x, y = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    wx, wy, ww, wh = BOX_WEIGHTS
    return torch.stack([wx * (x - xa) / wa, wy * (y - ya) / ha, ww * torch.log(w / wa), wh * torch.log(h / ha)], -1)


def decode_boxes(codes: Tensor, anchors: Tensor) -> Tensor:
    """Boxes xyxy (..., 4) from regression ``codes`` (..., 4) and ``anchors`` (broadcastable to codes)."""
    wa, ha = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    xa, ya = (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2
    wx, wy, ww, wh = BOX_WEIGHTS
    x, y = codes[..., 0] / wx * wa + xa, codes[..., 1] / wy * ha + ya
    w = torch.exp(torch.clamp(codes[..., 2] / ww, max=BOX_CLIP)) * wa
    h = torch.exp(torch.clamp(codes[..., 3] / wh, max=BOX_CLIP)) * ha
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=-1)


def giou_loss(pred_xyxy: Tensor, target_xyxy: Tensor) -> Tensor:
    """Per-box ``1 - GIoU`` between predicted and target boxes, GLIP's ATSS ``GIoULoss`` before weighting.

    Args:
        pred_xyxy: (M, 4) predicted boxes ``(x1, y1, x2, y2)``; an inverted box is flattened to zero width or
            height (``x2 = max(x1, x2)``) as GLIP does.
        target_xyxy: (M, 4) target boxes.

    Returns:
        (M,) losses in [0, 2]. GLIP sums them weighted by the centerness targets and divides by the centerness
        sum averaged over processes (the caller's job). Areas carry GLIP's ``+1e-7`` on the union and the
        enclosing box.
    """
    px1, py1, px2, py2 = pred_xyxy.unbind(-1)
    px2, py2 = torch.maximum(px1, px2), torch.maximum(py1, py2)
    tx1, ty1, tx2, ty2 = target_xyxy.unbind(-1)
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)
    iw = torch.minimum(px2, tx2) - torch.maximum(px1, tx1)
    ih = torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
    intersect = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    enclosing_w = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
    enclosing = enclosing_w * (torch.maximum(py2, ty2) - torch.minimum(py1, ty1)) + 1e-7
    union = pred_area + target_area - intersect + 1e-7
    giou = intersect / union - (enclosing - union) / enclosing
    return 1 - giou


def centerness_target(anchor_points: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """FCOS/ATSS centerness of each anchor centre inside its assigned box, the target of GLIP's centerness BCE.

    ``sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b))`` with ``l, t, r, b`` the distances from the point to the
    box's left, top, right and bottom sides (GLIP modeling/rpn/loss.py · compute_centerness_targets, which
    decodes the box from the regression target first). 1 at the box centre, towards 0 at an edge.

    Args:
        anchor_points: (M, 2) anchor centres ``(cx, cy)`` (ATSS positives lie inside their box).
        boxes_xyxy: (M, 4) assigned boxes ``(x1, y1, x2, y2)``.

    Returns:
        (M,) centerness in [0, 1].
    """
    cx, cy = anchor_points.unbind(-1)
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    lr = torch.stack([cx - x1, x2 - cx], dim=-1)
    tb = torch.stack([cy - y1, y2 - cy], dim=-1)
    return torch.sqrt((lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values))
