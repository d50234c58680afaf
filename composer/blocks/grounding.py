"""GLIP's region-phrase grounding parts (Li, Zhang et al. 2022, arXiv:2112.03857): a box-aware resize, a
feature-pyramid encoder, ATSS anchors and targets, and the vision-language alignment head.

Official code (microsoft/GLIP, maskrcnn_benchmark/modeling/rpn/): vldyhead.py · VLDyHead (the head),
loss.py · ATSSLossComputation.prepare_targets (ATSS), atss.py · BoxCoder (box codes), anchor_generator.py;
data/transforms (resize, flip 0.5). What differs, and why:

- no deep fusion between the towers (GLIP-T (A) in the paper's Table 1 has none), and the six DyHead blocks are
  ``num_convs`` conv3x3-GroupNorm-ReLU layers (the ATSS head GLIP starts from): both are CPU-sized choices;
- boxes are continuous pixel coordinates ([x1, x2) covers x2 - x1 pixels), so the coder drops maskrcnn's legacy
  ``+1`` on widths; weights (10, 10, 5, 5) and the exp clamp log(1000/16) are GLIP's;
- anchors are square, one per location, ``anchor_scale * stride`` wide (GLIP: ANCHOR_SIZES 64..1024 for strides
  8..128, i.e. scale 8, aspect 1, one scale per octave), centred on the cell: ``((j + 0.5) s, (i + 0.5) s)``.

The assignment is ATSS, as GLIP (not a simpler centre sampling): per box, the ``topk`` anchors per level
closest to its centre are candidates; those with IoU >= mean + std of the candidates' IoUs and a centre inside
the box are positive; an anchor claimed by several boxes keeps the one it overlaps most.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou
from torchvision.transforms import v2

from composer.blocks.augment import IMAGENET_MEAN, IMAGENET_STD, Augment
from composer.blocks.boxes import centerness_target
from composer.blocks.registry import block

# ----------------------------------------------------------------------------- anchors and box codes

def make_anchors(size: int, strides: list[int], anchor_scale: float) -> tuple[Tensor, list[int]]:
    """Square anchors of all levels, level-major then row-major (the head's flattening order).

    Returns ``anchors (A, 4)`` xyxy pixels and the number of anchors per level.
    """
    out, counts = [], []
    for s in strides:
        n = size // s
        centres = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        half = anchor_scale * s / 2
        out.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4))
        counts.append(n * n)
    return torch.cat(out), counts


def atss_assign(anchors: Tensor, counts: list[int], boxes: Tensor, topk: int) -> Tensor:
    """ATSS (Zhang et al. 2020; GLIP loss.py · prepare_targets): the box index of each anchor, -1 if negative.

    Args:
        anchors: (A, 4) all levels concatenated; counts: anchors per level; boxes: (n, 4); topk: candidates
            per level and box (GLIP MODEL.ATSS.TOPK 9).
    """
    a, n = anchors.shape[0], boxes.shape[0]
    if n == 0:
        return torch.full((a,), -1, dtype=torch.long)
    ious = box_iou(anchors, boxes)  # (A, n)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, box_centres)  # (A, n)
    candidates, start = [], 0
    for count in counts:
        k = min(topk, count)
        candidates.append(distances[start:start + count].topk(k, dim=0, largest=False).indices + start)
        start += count
    candidates = torch.cat(candidates)  # (C, n)
    cand_ious = ious.gather(0, candidates)  # (C, n)
    threshold = cand_ious.mean(0) + cand_ious.std(0)  # unbiased std, as torch's default in GLIP
    cx, cy = anchor_centres[candidates, 0], anchor_centres[candidates, 1]  # (C, n)
    inside = torch.stack([cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx, boxes[:, 3] - cy]).amin(0) > 0.01
    positive = (cand_ious >= threshold) & inside
    claimed = torch.full_like(ious, -math.inf)
    cols = torch.arange(n).expand_as(candidates)
    claimed[candidates[positive], cols[positive]] = ious[candidates[positive], cols[positive]]
    best, index = claimed.max(dim=1)  # an anchor claimed by several boxes keeps the one with the highest IoU
    return torch.where(best > -math.inf, index, torch.full_like(index, -1))


# ----------------------------------------------------------------------------- data stage

class BoxedImages(NamedTuple):
    image: Tensor  # (B, 3, S, S) float32, normalised
    boxes: list  # B float32 (n_i, 4) xyxy in pixels of the resized image


@block("augment.grounding")
class GroundingAugment(Augment):
    """Resize to S x S with the boxes, random horizontal flip, normalise (GLIP's training transform, square).

    GLIP resizes the shorter side to 480-800 keeping the aspect ratio (AUGMENT.MULT_MIN_SIZE_TRAIN) and flips with
    probability 0.5 (AUGMENT.FLIP_PROB_TRAIN) without editing the caption: keep ``flip: 0`` for captions that
    say left or right. In eval mode (``.eval()``) nothing is random.

    Args:
        size: output side S in pixels.
        flip: probability of a horizontal flip (GLIP 0.5).
        mean: per-channel normalisation mean (ImageNet's; GLIP PIXEL_MEAN in BGR 0-255).
        std: per-channel normalisation std (ImageNet's).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.
        boxes: list of B float (n_i, 4) xyxy boxes in pixels of the input images.

    Output: ``BoxedImages(image (B, 3, S, S), boxes)``.
    """

    def __init__(self, *, size: int = 800, flip: float = 0.5, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(mean=mean, std=std)
        self.size = self._check_size("size", size)
        self.flip = self._check_prob("flip", flip)
        self.resize = v2.Resize((size, size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)

    def forward(self, image: Tensor | list[Tensor], boxes: list) -> BoxedImages:
        samples = self._samples(image)
        if len(boxes) != len(samples):
            raise self._error(f"{len(boxes)} box sets for {len(samples)} images")
        out_images, out_boxes = [], []
        for x, b in zip(samples, boxes):
            b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
            h, w = x.shape[-2:]
            x = self.resize(x)
            b = b * torch.tensor([self.size / w, self.size / h] * 2)
            if self.training and self.flip > 0 and float(torch.rand(())) < self.flip:
                x = x.flip(-1)
                b = torch.stack([self.size - b[:, 2], b[:, 1], self.size - b[:, 0], b[:, 3]], dim=-1)
            out_images.append(x)
            out_boxes.append(b)
        return BoxedImages(self.to_float(torch.stack(out_images)), out_boxes)


class GroundingTargets(NamedTuple):
    tokens: Tensor  # (B, A, T) binary token targets ("no object" = last position for negatives)
    boxes: Tensor  # (B, A, 4) the assigned box of each positive anchor (the anchor itself for negatives)
    positive: Tensor  # (B, A) 1.0 for ATSS positives
    centerness: Tensor  # (B, A) centerness target of positives, 0 for negatives
    anchors: Tensor  # (A, 4) xyxy, all levels


@block("targets.atss")
class ATSSTargets(nn.Module):
    """ATSS assignment of anchors to boxes, and GLIP's token, box and centerness targets (data stage).

    For each image: anchors on every level, ATSS picks the positives (see the module docstring), a positive
    anchor's token target is its box's row of the positive map (the phrase's tokens), a negative's is a single 1
    at the last token position (GLIP ``unmatched_labels[-1] = 1``; it counts only when that position is a real
    token), and positives get their box and the centerness of their centre in it (compute_centerness_targets).

    Args:
        size: image side S the anchors cover (the resized image).
        strides: stride of each feature level (GLIP 8, 16, 32, 64, 128); S must be a multiple of each.
        anchor_scale: anchor side in strides (GLIP 8: ANCHOR_SIZES 64-1024 over strides 8-128).
        topk: ATSS candidates per level and box (GLIP MODEL.DYHEAD.TOPK / MODEL.ATSS.TOPK 9).

    Inputs:
        boxes: list of B float (n_i, 4) xyxy boxes in pixels of the S x S image.
        positive_map: list of B float (n_i, T) rows (``tokenizer.bytes``'s ``positive``).

    Output: ``GroundingTargets(tokens (B, A, T), boxes (B, A, 4), positive (B, A), centerness (B, A),
    anchors (A, 4))``.
    """

    stage = "data"

    def __init__(self, *, size: int = 800, strides: list[int] = (8, 16, 32, 64, 128), anchor_scale: float = 8.0,
                 topk: int = 9):
        super().__init__()
        strides = [int(s) for s in strides]
        if not strides or any(s < 1 or size % s for s in strides):
            raise ValueError(f"targets.atss: every stride must be positive and divide size {size}, got {strides}")
        if anchor_scale <= 0 or topk < 1:
            raise ValueError(f"targets.atss: need anchor_scale > 0 and topk >= 1, got {anchor_scale}, {topk}")
        self.size, self.strides, self.topk = size, strides, topk
        self.anchors, self.counts = make_anchors(size, strides, anchor_scale)

    def forward(self, boxes: list, positive_map: list) -> GroundingTargets:
        if len(boxes) != len(positive_map):
            raise ValueError(f"targets.atss: {len(boxes)} box sets but {len(positive_map)} positive maps")
        anchors, a = self.anchors, self.anchors.shape[0]
        tokens, matched, positive, centerness = [], [], [], []
        for b, pmap in zip(boxes, positive_map):
            b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
            if pmap.shape[0] != b.shape[0]:
                raise ValueError(f"targets.atss: {b.shape[0]} boxes but {pmap.shape[0]} positive-map rows")
            index = atss_assign(anchors, self.counts, b, self.topk)  # (A,)
            pos = index >= 0
            no_object = torch.zeros(a, pmap.shape[1])
            no_object[:, -1] = 1.0
            tokens.append(torch.where(pos[:, None], pmap[index.clamp(min=0)] if len(b) else no_object, no_object))
            box = torch.where(pos[:, None], b[index.clamp(min=0)] if len(b) else anchors, anchors)
            centres = (anchors[:, :2] + anchors[:, 2:]) / 2
            matched.append(box)
            positive.append(pos.float())
            centerness.append(torch.where(pos, centerness_target(centres, box), torch.zeros(a)))
        return GroundingTargets(torch.stack(tokens), torch.stack(matched), torch.stack(positive),
                                torch.stack(centerness), anchors.clone())


# ----------------------------------------------------------------------------- model stage

class FeatureMaps(NamedTuple):
    levels: list  # L float (B, C, H_l, W_l) maps, finest first
    pooled: Tensor  # (B, D) global average of the deepest backbone map (for probes and export)


@block("encoder.fpn")
class FPNEncoder(nn.Module):
    """A timm backbone's feature maps (``features_only``) with a feature pyramid (Lin et al. 2017) on top.

    FPN as in GLIP's backbone (maskrcnn_benchmark/modeling/backbone/fpn.py): a 1x1 lateral conv per level,
    top-down nearest upsampling and addition, a 3x3 output conv; GLIP adds P6-P7 (LastLevelP6P7), left out here.

    Args:
        arch: timm model name (GLIP-T: Swin-T; resnet18 or resnet10t for small runs); random init.
        out_indices: backbone stages used as pyramid levels (timm ``out_indices``; for ResNets 1, 2, 3, 4 are
            strides 4, 8, 16, 32).
        channels: pyramid width (GLIP MODEL.BACKBONE.OUT_CHANNELS 256).
        model_args: extra keyword arguments for ``timm.create_model``.

    Inputs:
        x: (B, 3, H, W) images.

    Output: ``FeatureMaps(levels, pooled)``.
    """

    def __init__(self, *, arch: str, out_indices: list[int] = (1, 2, 3, 4), channels: int = 256,
                 model_args: dict | None = None):
        super().__init__()
        if not timm.is_model(arch):
            raise ValueError(f"encoder.fpn: unknown timm model {arch!r}")
        if channels < 1 or not out_indices:
            raise ValueError(f"encoder.fpn: need channels >= 1 and at least one out index, got {channels}, "
                             f"{out_indices}")
        args = dict(model_args or {})
        if args.pop("pretrained", False):
            raise ValueError("encoder.fpn: pretrained weights would need a download; train from scratch")
        self.net = timm.create_model(arch, pretrained=False, features_only=True, out_indices=tuple(out_indices),
                                     **args)
        dims = self.net.feature_info.channels()
        self.strides = self.net.feature_info.reduction()
        self.lateral = nn.ModuleList(nn.Conv2d(d, channels, 1) for d in dims)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in dims)
        for conv in [*self.lateral, *self.output]:  # fpn.py: kaiming_uniform_(a=1), bias 0
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.dim = dims[-1]

    def forward(self, x: Tensor) -> FeatureMaps:
        maps = self.net(x)
        inner = self.lateral[-1](maps[-1])
        levels = [self.output[-1](inner)]
        for i in range(len(maps) - 2, -1, -1):
            inner = self.lateral[i](maps[i]) + F.interpolate(inner, size=maps[i].shape[-2:], mode="nearest")
            levels.insert(0, self.output[i](inner))
        return FeatureMaps(levels, maps[-1].mean(dim=(2, 3)))


class GroundingPredictions(NamedTuple):
    logits: Tensor  # (B, A, T) anchor-token alignment logits
    regression: Tensor  # (B, A, 4) box codes relative to the anchors
    centerness: Tensor  # (B, A) centerness logits


class Scale(nn.Module):
    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@block("head.glip")
class GLIPHead(nn.Module):
    """GLIP's head: a conv tower over the pyramid, box and centerness convs, and the region-token dot product.

    ``tok = normalize(tokens)``; ``proj = Linear(tok / 2)``; ``bias = tok @ bias_lang + bias0``;
    ``logit = (query @ proj^T) / exp(log_scale) + bias``, clamped to +-50000 (vldyhead.py · VLDyHead.forward
    with USE_DOT_PRODUCT_TOKEN_LOSS; the query is the tower feature at each location, an identity projection).
    Init: ``bias0 = -log((1 - p) / p)`` with prior p = 0.01 (-4.595), ``log_scale = 0``, ``bias_lang = 0``;
    convs N(0, 0.01) with zero bias; one learnable box-regression ``Scale`` (1.0) per level.

    Args:
        channels: pyramid and tower width C (GLIP 256).
        text_dim: width of the token features D (BERT 768; ``encoder.text``'s width).
        levels: number of pyramid levels (one regression scale each).
        num_convs: conv3x3-GroupNorm-ReLU layers in the tower (GLIP-T: 6 DyHead blocks; ATSS 4).
        groups: GroupNorm groups (GLIP MODEL.GROUP_NORM.NUM_GROUPS 16).
        prior_prob: initial alignment probability (MODEL.DYHEAD.PRIOR_PROB 0.01).
        log_scale: initial log temperature of the dot product (MODEL.DYHEAD.LOG_SCALE 0).

    Inputs:
        features: list of L (B, C, H_l, W_l) maps (``encoder.fpn``'s ``levels``).
        tokens: (B, T, D) token features (``encoder.text``'s ``tokens``).

    Output: ``GroundingPredictions(logits (B, A, T), regression (B, A, 4), centerness (B, A))``.
    """

    def __init__(self, *, channels: int = 256, text_dim: int = 768, levels: int = 5, num_convs: int = 6,
                 groups: int = 16, prior_prob: float = 0.01, log_scale: float = 0.0):
        super().__init__()
        if channels < 1 or text_dim < 1 or levels < 1 or num_convs < 0 or groups < 1 or channels % groups:
            raise ValueError(f"head.glip: need positive channels, text_dim, levels and groups dividing channels, "
                             f"got channels={channels}, text_dim={text_dim}, levels={levels}, groups={groups}")
        if not 0 < prior_prob < 1:
            raise ValueError(f"head.glip: prior_prob must lie in (0, 1), got {prior_prob}")
        tower: list[nn.Module] = []
        for _ in range(num_convs):
            tower += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU()]
        self.tower = nn.Sequential(*tower)
        self.bbox_pred = nn.Conv2d(channels, 4, 1)
        self.centerness = nn.Conv2d(channels, 1, 1)
        for conv in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(levels))
        self.token_proj = nn.Linear(text_dim, channels)  # dot_product_projection_text (default init)
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, features: list, tokens: Tensor) -> GroundingPredictions:
        if len(features) != len(self.scales):
            raise ValueError(f"head.glip: {len(features)} feature levels for a head built with levels="
                             f"{len(self.scales)}")
        embedding = F.normalize(tokens, p=2, dim=-1)  # (B, T, D)
        proj = self.token_proj(embedding / 2.0)  # (B, T, C)
        bias = (embedding @ self.bias_lang + self.bias0)[:, None, :]  # (B, 1, T)
        logits, regression, centerness = [], [], []
        for level, x in enumerate(features):
            y = self.tower(x)  # (B, C, H, W)
            b = y.shape[0]
            query = y.flatten(2).transpose(1, 2)  # (B, HW, C), row-major like the anchors
            logits.append(torch.clamp(query @ proj.transpose(1, 2) / self.log_scale.exp() + bias, -50000, 50000))
            regression.append(self.scales[level](self.bbox_pred(y)).flatten(2).transpose(1, 2))
            centerness.append(self.centerness(y).reshape(b, -1))
        return GroundingPredictions(torch.cat(logits, 1), torch.cat(regression, 1), torch.cat(centerness, 1))
