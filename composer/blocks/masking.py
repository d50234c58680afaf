"""Maskers: data-stage blocks that draw patch-index masks for a batch (MAE, BEiT, I-JEPA).

They run in DataLoader workers (``stage = "data"``) and only read the batch's shape: ``image (B, 3, H, W)``
and ``patch_size`` give the patch grid ``H/p × W/p``; patches are numbered row-major. Randomness comes from
the generators the DataLoader seeds in every worker (torch's global generator; Python's ``random`` for BEiT,
which is what the official code uses), so no block keeps RNG state and ``forward`` mutates nothing.

Each masker also exposes a pure function of its random draws, so tests can pin the official behaviour.
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple

import torch
from torch import Tensor, nn

from composer.blocks.ranges import Range
from composer.blocks.registry import block
from composer.blocks.vit import gather_tokens


def _grid(image: Tensor, patch_size: int, kind: str) -> tuple[int, int, int]:
    if image.dim() != 4:
        raise ValueError(f"{kind}: expected image (B, C, H, W), got shape {tuple(image.shape)}")
    b, _, h, w = image.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"{kind}: image size {h}x{w} is not divisible by patch_size {patch_size}")
    return b, h // patch_size, w // patch_size


# ---------------------------------------------------------------------------------------------- MAE


class RandomMask(NamedTuple):
    keep: Tensor  # (B, L_keep) long: kept patch indices, in shuffle order (the encoder's token order)
    restore: Tensor  # (B, L) long: ids_restore, unshuffles [kept, removed] back to image order
    mask: Tensor  # (B, L) float: 1 = removed, 0 = kept


def random_masking(noise: Tensor, ratio: float) -> RandomMask:
    """MAE's ``random_masking`` given the noise ``(B, L)``: keep the ``int(L·(1−ratio))`` smallest-noise
    patches (``models_mae.py · random_masking``)."""
    length = noise.shape[-1]
    len_keep = int(length * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=-1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=-1)
    mask = torch.ones_like(noise)
    mask[..., :len_keep] = 0
    return RandomMask(ids_shuffle[..., :len_keep], ids_restore, torch.gather(mask, -1, ids_restore))


@block("mask.random")
class RandomMasking(nn.Module):
    """MAE's per-sample random masking: exactly ``L − int(L·(1−ratio))`` patches removed per image.

    Noise is ``torch.rand`` from the global generator (seeded per DataLoader worker).

    Args:
        ratio: fraction of patches removed (0.75, MAE ``main_pretrain.py --mask_ratio``).
        patch_size: patch side in pixels (16).

    Inputs:
        image: (B, 3, H, W); only its shape is used.
    """

    stage = "data"

    def __init__(self, *, ratio: float = 0.75, patch_size: int = 16):
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask.random: ratio must be in [0, 1), got {ratio}")
        if patch_size <= 0:
            raise ValueError(f"mask.random: patch_size must be positive, got {patch_size}")
        self.ratio, self.patch_size = ratio, patch_size

    def forward(self, image: Tensor) -> RandomMask:
        b, gh, gw = _grid(image, self.patch_size, "mask.random")
        if int(gh * gw * (1 - self.ratio)) < 1:
            raise ValueError(f"mask.random: ratio {self.ratio} keeps no patch of a {gh}x{gw} grid")
        return random_masking(torch.rand(b, gh * gw), self.ratio)


# --------------------------------------------------------------------------------------------- BEiT


class Box(NamedTuple):
    top: int
    left: int
    height: int
    width: int
    new: int  # patches this box newly masked


def beit_block_mask(height: int, width: int, num_masking_patches: int, min_num_patches: int,
                    max_num_patches: int, min_aspect: float, max_aspect: float,
                    rng=random) -> tuple[Tensor, list[Box]]:
    """BEiT's ``MaskingGenerator.__call__`` (``masking_generator.py``) with Python ``random`` semantics.

    Returns the ``(height, width)`` long mask and the boxes that added patches, in order. The draws are the
    official ones, in the official order (``uniform`` area, ``uniform`` log-aspect, ``randint`` top/left with
    inclusive bounds), so the same seeded ``random.Random`` gives the same mask.
    """
    log_ar = (math.log(min_aspect), math.log(max_aspect))
    mask = torch.zeros(height, width, dtype=torch.long)
    boxes: list[Box] = []
    count = 0
    while count < num_masking_patches:
        max_patches = min(num_masking_patches - count, max_num_patches)
        delta = 0
        for _ in range(10):  # _mask: up to 10 attempts, stop after the first that adds patches
            area = rng.uniform(min_num_patches, max_patches)
            aspect = math.exp(rng.uniform(*log_ar))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                region = mask[top:top + h, left:left + w]
                new = h * w - int(region.sum())
                if 0 < new <= max_patches:
                    region.fill_(1)
                    delta = new
                    boxes.append(Box(top, left, h, w, new))
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask, boxes


class BlockMask(NamedTuple):
    mask: Tensor  # (..., L) float: 1 = masked (encoder.beit's bool_masked_pos, iBOT's student mask)
    index: Tensor  # (..., N) long: masked indices ascending, padded with 0 up to N
    valid: Tensor  # (..., N) float: 1 for a real masked index, 0 for padding


def draw_ratio(ratio: list[float], ratio_var: list[float], rng=random) -> float:
    """iBOT's per-crop masking ratio (bytedance/ibot · loader.py · ImageFolderMask.get_pred_ratio): for each
    entry ``U(ratio − var, ratio + var)`` (just ``ratio`` when var is 0), then ``rng.choice`` among them, with
    Python ``random`` draws in that order."""
    drawn = [rng.uniform(m - v, m + v) if v > 0 else m for m, v in zip(ratio, ratio_var)]
    return rng.choice(drawn)


@block("mask.block")
class BlockwiseMasking(nn.Module):
    """BEiT's block-wise masking: rectangles of ≥ ``min_num_patches`` until ``num_masking_patches``.

    The masked count varies per image (≤ num_masking_patches, 74.5 on average for 75 of 196), so besides
    the ``(B, L)`` mask the block returns the masked indices padded to a fixed ``N = num_masking_patches``
    with a ``valid`` weight: ``head.beit_lm`` gathers exactly those positions and ``loss.masked_token_ce``
    averages over the valid ones, which equals BEiT's ``lm_head(x[bool_masked_pos])`` + CE with static
    shapes. Randomness: Python's ``random`` module, as the official generator (the DataLoader seeds it per
    worker).

    With ``ratio`` the target varies per image instead, as iBOT's ``pred_shape='block'`` masks
    (bytedance/ibot · loader.py · ImageFolderMask): each image draws its ratio r (``draw_ratio``), then the same
    rectangle procedure masks up to ``r·L`` patches (``max_num_patches`` None: the whole remainder, as iBOT);
    N is then ``floor(max(ratio + ratio_var)·L)``. iBOT's README recipe: ``ratio: [0.0, 0.3], ratio_var:
    [0.0, 0.2]``: half the crops unmasked, half masked at U(0.1, 0.5); iBOT's smallest block is
    ``(min(h, w) // 3)²`` patches (16 on 14×14).

    A leading view axis is kept: ``image (V, B, 3, H, W)`` gives ``mask (V, B, L)``, one draw per crop (iBOT
    masks every crop of an image independently).

    Args:
        patch_size: patch side in pixels (16; 224 px → 14×14 grid).
        num_masking_patches: patches to mask per image (75 = 40 % of 196, ``--num_mask_patches``); unused
            with ``ratio``.
        min_num_patches: smallest block area (16, ``--min_mask_patches_per_block``; iBOT 16 on 14×14).
        max_num_patches: largest block area; None means the per-image target (``--max_mask_patches_per_block``
            default None).
        min_aspect: smallest block aspect ratio (0.3; iBOT ``pred_aspect_ratio=(0.3, 1/0.3)``).
        max_aspect: largest aspect ratio; None means 1/min_aspect (3.33).
        ratio: per-image masking ratios to choose from, each in [0, 1) (iBOT ``--pred_ratio``); None: a
            fixed ``num_masking_patches``.
        ratio_var: half-width of the uniform draw around each ratio (iBOT ``--pred_ratio_var``); None: zeros.

    Inputs:
        image: (B, 3, H, W), optionally with leading view axes; only its shape is used.
    """

    stage = "data"
    ranges = {"ratio": Range(ge=0, lt=1), "ratio_var": Range(ge=0, lt=1)}  # iBOT: ratio 0 = an unmasked crop

    def __init__(self, *, patch_size: int = 16, num_masking_patches: int = 75, min_num_patches: int = 16,
                 max_num_patches: int | None = None, min_aspect: float = 0.3, max_aspect: float | None = None,
                 ratio: list[float] | None = None, ratio_var: list[float] | None = None):
        super().__init__()
        max_aspect = 1 / min_aspect if max_aspect is None and min_aspect > 0 else max_aspect
        if patch_size <= 0 or num_masking_patches <= 0 or min_num_patches <= 0 or \
                (max_num_patches is not None and max_num_patches <= 0):
            raise ValueError("mask.block: patch_size, num_masking_patches, min_num_patches and max_num_patches "
                             "must be positive")
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"mask.block: need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.ratios = None
        if ratio is not None or ratio_var is not None:
            ratio = list(ratio or [])
            ratio_var = [0.0] * len(ratio) if ratio_var is None else list(ratio_var)
            if not ratio or len(ratio_var) != len(ratio):
                raise ValueError(f"mask.block: ratio needs at least one value and ratio_var one per ratio, got "
                                 f"ratio={ratio}, ratio_var={ratio_var}")
            if not all(0 <= v <= m and m + v < 1 for m, v in zip(ratio, ratio_var)):
                raise ValueError(f"mask.block: need 0 <= ratio_var <= ratio and ratio + ratio_var < 1 (iBOT "
                                 f"asserts ratio >= var), got ratio={ratio}, ratio_var={ratio_var}")
            self.ratios = (ratio, ratio_var)
        self.patch_size, self.num, self.max_num = patch_size, num_masking_patches, max_num_patches
        self.sizes = (min_num_patches, min_aspect, max_aspect)

    def _one(self, gh: int, gw: int) -> Tensor:
        target = self.num if self.ratios is None else draw_ratio(*self.ratios) * gh * gw
        lo, *aspect = self.sizes
        top = target if self.max_num is None else self.max_num
        return beit_block_mask(gh, gw, target, lo, top, *aspect)[0].flatten()

    def forward(self, image: Tensor) -> BlockMask:
        lead = image.shape[:-3]
        b, gh, gw = _grid(image.reshape(-1, *image.shape[-3:]), self.patch_size, "mask.block")
        if self.ratios is None:
            n = self.num
            if n > gh * gw:
                raise ValueError(f"mask.block: num_masking_patches {n} exceeds the {gh}x{gw} patch grid")
        else:
            n = max(1, int(max(m + v for m, v in zip(*self.ratios)) * gh * gw))
        masks = torch.stack([self._one(gh, gw) for _ in range(b)]) if b else torch.zeros(0, gh * gw).long()
        # stable sort of "not masked" puts the masked indices first, ascending
        order = torch.sort((1 - masks), dim=1, stable=True).indices[:, :n]
        valid = torch.gather(masks, 1, order).float()
        return BlockMask(masks.float().reshape(*lead, -1), (order * valid.long()).reshape(*lead, n),
                         valid.reshape(*lead, n))


# ------------------------------------------------------------------------------------------- I-JEPA


class MultiBlockMasks(NamedTuple):
    context: Tensor  # (B, K_e) long: context-block indices, ascending
    targets: Tensor  # (npred, B, K_p) long: each target block's indices, ascending


def block_size(height: int, width: int, scale: tuple[float, float], aspect_ratio: tuple[float, float],
               rand_scale: float, rand_aspect: float, max_h: int, max_w: int) -> tuple[int, int]:
    """I-JEPA's ``_sample_block_size`` given its uniform draws, capped at ``max_h × max_w``.

    The official code uses one draw for both (``rand_scale == rand_aspect``) and caps at ``(H−1)×(W−1)``.
    """
    max_keep = int(height * width * (scale[0] + rand_scale * (scale[1] - scale[0])))
    ar = aspect_ratio[0] + rand_aspect * (aspect_ratio[1] - aspect_ratio[0])
    h, w = int(round(math.sqrt(max_keep * ar))), int(round(math.sqrt(max_keep / ar)))
    return min(h, max_h), min(w, max_w)


@block("mask.multi_block")
class MultiBlockMasking(nn.Module):
    """I-JEPA's multi-block masks (``src/masks/multiblock.py · MaskCollator``), official quirks included.

    Per batch: one target size and one context size. Per image: ``npred`` target blocks, then one context
    block with every target removed (if 20 tries leave ≤ ``min_keep`` patches, the last target constraint is
    dropped, and so on). Masks are ``nonzero`` (ascending) indices, truncated to the shortest in the batch.

    Reproduced quirks: one uniform draw sets both scale and aspect ratio of a block; block sides are capped
    at ``grid−1``; corners are ``torch.randint(0, grid − side)`` (exclusive bound), so targets never touch
    the last row/column and the context (15×15 of 16×16, 13×13 of 14×14) always sits at the top-left.
    ``mask.multi_block_fixed`` is the corrected variant. Randomness: torch's global generator for all draws
    (the official code draws the two sizes from a generator seeded with a shared iteration counter; the
    distribution is the same, the per-step sequence is not).

    Args:
        patch_size: patch side in pixels (14 for ViT-H/14, 16 for ViT-B/16).
        npred: target blocks per image (4, ``configs/in1k_vith14_ep300.yaml · num_pred_masks``).
        pred_scale: target block area range as a fraction of the grid ((0.15, 0.2)).
        enc_scale: context block area range ((0.85, 1.0)); its aspect ratio is fixed to 1.
        aspect_ratio: target aspect ratio (h/w) range ((0.75, 1.5)).
        min_keep: a block must keep more than this many patches (10).
        allow_overlap: keep target patches inside the context (False).

    Inputs:
        image: (B, 3, H, W); only its shape is used.
    """

    stage = "data"
    quirks = True  # class constant: the variant is a separate block kind

    def __init__(self, *, patch_size: int = 16, npred: int = 4, pred_scale: tuple[float, float] = (0.15, 0.2),
                 enc_scale: tuple[float, float] = (0.85, 1.0), aspect_ratio: tuple[float, float] = (0.75, 1.5),
                 min_keep: int = 10, allow_overlap: bool = False):
        super().__init__()
        kind = self.kind
        if patch_size <= 0 or npred <= 0 or min_keep < 0:
            raise ValueError(f"{kind}: need patch_size > 0, npred > 0, min_keep >= 0")
        for name, (lo, hi) in (("pred_scale", pred_scale), ("enc_scale", enc_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{kind}: {name} must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        if not 0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ValueError(f"{kind}: aspect_ratio must satisfy 0 < lo <= hi, got {aspect_ratio}")
        self.patch_size, self.npred, self.min_keep, self.allow_overlap = patch_size, npred, min_keep, allow_overlap
        self.pred_scale, self.enc_scale, self.aspect_ratio = tuple(pred_scale), tuple(enc_scale), tuple(aspect_ratio)

    def sizes(self, gh: int, gw: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(target size, context size) for this batch."""
        def draw(scale, ar):
            r = torch.rand(1).item()
            r_ar = r if self.quirks else torch.rand(1).item()
            cap = (gh - 1, gw - 1) if self.quirks else (gh, gw)
            h, w = block_size(gh, gw, scale, ar, r, r_ar, *cap)
            return (h, w) if self.quirks else (max(h, 1), max(w, 1))
        return draw(self.pred_scale, self.aspect_ratio), draw(self.enc_scale, (1.0, 1.0))

    def _corner(self, grid: int, side: int) -> int:
        high = grid - side if self.quirks else grid - side + 1
        return int(torch.randint(0, high, (1,)))

    def _block(self, gh: int, gw: int, size: tuple[int, int], regions: list[Tensor] | None) -> tuple[Tensor, Tensor]:
        """One block's indices and complement (``_sample_block_mask``), dropping constraints as it fails."""
        h, w = size
        tries, timeout = 0, 20
        while True:
            top, left = self._corner(gh, h), self._corner(gw, w)
            mask = torch.zeros(gh, gw, dtype=torch.int32)
            mask[top:top + h, left:left + w] = 1
            for region in (regions or [])[:max(len(regions or []) - tries, 0)]:
                mask *= region
            idx = torch.nonzero(mask.flatten()).flatten()
            if len(idx) > self.min_keep:
                break
            timeout -= 1
            if timeout == 0:
                tries, timeout = tries + 1, 20
        complement = torch.ones(gh, gw, dtype=torch.int32)
        complement[top:top + h, left:left + w] = 0
        return idx, complement

    def sample(self, batch: int, gh: int, gw: int, p_size: tuple[int, int],
               e_size: tuple[int, int]) -> MultiBlockMasks:
        """The per-image part of ``MaskCollator.__call__`` for given block sizes."""
        for what, (h, w) in (("target", p_size), ("context", e_size)):
            if h * w <= self.min_keep:  # the official loop would never end
                raise ValueError(f"{self.kind}: a {h}x{w} {what} block on a {gh}x{gw} grid cannot keep more "
                                 f"than min_keep={self.min_keep} patches")
        targets, contexts = [], []
        for _ in range(batch):
            blocks = [self._block(gh, gw, p_size, None) for _ in range(self.npred)]
            targets.append([idx for idx, _ in blocks])
            regions = None if self.allow_overlap else [c for _, c in blocks]
            contexts.append(self._block(gh, gw, e_size, regions)[0])
        kp = min(len(t) for per_image in targets for t in per_image)
        ke = min(len(c) for c in contexts)
        return MultiBlockMasks(
            torch.stack([c[:ke] for c in contexts]),
            torch.stack([torch.stack([per_image[m][:kp] for per_image in targets]) for m in range(self.npred)]))

    def forward(self, image: Tensor) -> MultiBlockMasks:
        b, gh, gw = _grid(image, self.patch_size, self.kind)
        return self.sample(b, gh, gw, *self.sizes(gh, gw))


@block("mask.multi_block_fixed")
class MultiBlockMaskingFixed(MultiBlockMasking):
    """I-JEPA's multi-block masks without the official quirks.

    Scale and aspect ratio get independent draws, a block may span the whole grid side, and corners are
    uniform over every valid position (``randint(0, grid − side + 1)``), so targets reach the last
    row/column and the context block moves. Everything else is ``mask.multi_block``.

    Args:
        patch_size: patch side in pixels (14 for ViT-H/14, 16 for ViT-B/16).
        npred: target blocks per image (4).
        pred_scale: target block area range as a fraction of the grid ((0.15, 0.2)).
        enc_scale: context block area range ((0.85, 1.0)); its aspect ratio is fixed to 1.
        aspect_ratio: target aspect ratio (h/w) range ((0.75, 1.5)).
        min_keep: a block must keep more than this many patches (10).
        allow_overlap: keep target patches inside the context (False).

    Inputs:
        image: (B, 3, H, W); only its shape is used.
    """

    quirks = False


@block("ops.gather_targets")
class GatherTargets(nn.Module):
    """I-JEPA's ``apply_masks``: the tokens of each target block, mask-major ``(npred·B, K_p, D)``.

    Row ``m·B + b`` is target block m of sample b, the order of ``head.ijepa_predictor``'s output.

    Inputs:
        tokens: (B, L, D) target-encoder tokens of the full image (no cls token).
        targets: (npred, B, K_p) long, ``mask.multi_block``'s targets.
    """

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:
        npred, b, kp = targets.shape
        return gather_tokens(tokens.repeat(npred, 1, 1), targets.reshape(npred * b, kp))
