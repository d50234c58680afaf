"""Vision Transformer parts for masked modelling: a ViT that runs on kept tokens only, MAE's decoder,
I-JEPA's predictor, BEiT's masked-image model and its LM head, and the small token ops they need.

Built on timm's layers (``timm.models.vision_transformer.Block``, ``timm.layers.PatchEmbed``; BEiT uses
``timm.models.beit.Block`` and ``RelativePositionBias``). Position embeddings are the fixed 2-D sin-cos
table of MAE / I-JEPA (``models_mae.py``/``pos_embed.py · get_2d_sincos_pos_embed``).

Token conventions: patches are numbered row-major (index ``r·W + c`` on a ``H×W`` patch grid); "keep",
"context" and "targets" are such indices. A cls token, when present, is always token 0.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import beit as timm_beit
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from composer.blocks.registry import block

# MAE, I-JEPA and BEiT all build their transformers with LayerNorm(eps=1e-6).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos position table ``(grid_h·grid_w, dim)``, row-major over patches.

    Same layout as MAE's ``get_2d_sincos_pos_embed``: the first half of the channels encodes the column
    (``meshgrid(grid_w, grid_h)`` puts w first), the second half the row; each half is ``[sin | cos]`` of
    the coordinate times ``ω_i = 10000^(−i/(dim/4))``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def one_axis(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega  # (L, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()


def patchify(image: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` → ``(B, L, p·p·C)`` in MAE's order ``(h, w, p, q, c)`` (``einsum nchpwq→nhwpqc``)."""
    b, c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = image.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x (B, L, D)``, ``index (B, K)`` → ``(B, K, D)``: the tokens at ``index`` of each sample."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _grid(size: int, patch_size: int, what: str) -> int:
    if size <= 0 or patch_size <= 0 or size % patch_size:
        raise ValueError(f"{what}: img_size {size} must be a positive multiple of patch_size {patch_size}")
    return size // patch_size


def _check_dims(what: str, dim: int, num_heads: int, depth: int, mlp_ratio: float) -> None:
    if dim <= 0 or dim % 4:
        raise ValueError(f"{what}: embed_dim must be a positive multiple of 4 (sin-cos table), got {dim}")
    if num_heads <= 0 or dim % num_heads:
        raise ValueError(f"{what}: embed_dim {dim} must be divisible by num_heads {num_heads}")
    if depth < 0 or mlp_ratio <= 0:
        raise ValueError(f"{what}: depth must be >= 0 and mlp_ratio > 0, got {depth}, {mlp_ratio}")


def _drop_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``drop_path`` (``torch.linspace``, done in Python so it
    also works when the model is built on the meta device)."""
    return [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


def _blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float) -> nn.Sequential:
    """timm ViT blocks with qkv bias (MAE, I-JEPA) and drop-path rising linearly to ``drop_path``."""
    rates = _drop_rates(drop_path, depth)
    return nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=LayerNorm)
                           for r in rates])


def _init_weights(m: nn.Module, scheme: str) -> None:
    """Per-module init. "xavier": MAE ``_init_weights`` (xavier-uniform Linear); "trunc_normal": I-JEPA
    ``init_model`` (trunc-normal 0.02 Linear, and the patch conv as in its constructor); "beit": BEiT
    ``_init_weights`` (trunc-normal 0.02 cut at ±std, Linear only). Biases 0, LayerNorm 1/0 in all three."""
    if isinstance(m, nn.Linear) or (scheme == "trunc_normal" and isinstance(m, nn.Conv2d)):
        if scheme == "xavier":
            nn.init.xavier_uniform_(m.weight)
        else:  # timm's a/b are absolute bounds: ±0.02 for BEiT, ±2 (no cut in practice) for I-JEPA
            cut = 0.02 if scheme == "beit" else 2.0
            trunc_normal_(m.weight, std=0.02, a=-cut, b=cut)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ViTOutput(NamedTuple):
    tokens: Tensor  # (B, [1+]K, D): cls first when the encoder has one; K = kept tokens (all L without keep)
    pooled: Tensor  # (B, D): the cls token, or the mean of the patch tokens without cls


@block("encoder.vit")
class ViTEncoder(nn.Module):
    """Vision Transformer that runs its blocks on the kept patch tokens only (MAE, I-JEPA context encoder).

    patch-embed → + fixed 2-D sin-cos position → gather ``keep`` → [prepend cls] → blocks → norm. Because the
    gather happens before the blocks, the cost follows the keep ratio (MAE ``forward_encoder``; I-JEPA
    ``VisionTransformer.forward`` with ``apply_masks`` before the blocks). Images of another size than
    ``img_size`` get the sin-cos table evaluated on their own grid (a fixed function, nothing to resample).

    A leading view axis is folded into the batch: ``image (V, B, 3, H, W)`` with ``keep (V, B, K)`` gives
    ``tokens (V, B, ·, D)`` and ``pooled (V, B, D)``. Use ``.pooled`` as the plain image embedding (kNN probe,
    export, joint-embedding heads) and ``.tokens`` for MAE's decoder, I-JEPA's predictor and targets.

    Args:
        img_size: training image side in pixels (224 in MAE, I-JEPA, MoCo v3).
        patch_size: patch side (16 for ViT-B/L; I-JEPA's ViT-H uses 14).
        embed_dim: token width D (ViT-B 768, MAE's default ViT-L 1024, I-JEPA's ViT-H 1280).
        depth: number of transformer blocks (ViT-B 12, ViT-L 24, ViT-H 32).
        num_heads: attention heads (ViT-B 12, ViT-L 16, ViT-H 16).
        mlp_ratio: MLP hidden width / D (4.0 in all three papers).
        cls_token: prepend a learnable cls token (MAE and MoCo v3 True; I-JEPA False).
        drop_path: stochastic-depth rate of the last block, rising linearly from 0 (MAE pre-training 0.0).
        init: weight init; "xavier" = MAE ``models_mae.py · _init_weights`` (also for the patch conv seen as
            a matrix), "trunc_normal" = I-JEPA ``helper.py · init_model`` (std 0.02).

    Inputs:
        image: (B, 3, H, W) float, optionally with a leading view axis.
        keep: (B, K) long patch indices to encode (``mask.random``'s ``keep``, ``mask.multi_block``'s
            ``context``); None encodes every patch.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, cls_token: bool = True, drop_path: float = 0.0,
                 init: Literal["xavier", "trunc_normal"] = "xavier"):
        super().__init__()
        grid = _grid(img_size, patch_size, "encoder.vit")
        _check_dims("encoder.vit", embed_dim, num_heads, depth, mlp_ratio)
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"encoder.vit: drop_path must be in [0, 1), got {drop_path}")
        if init not in ("xavier", "trunc_normal"):
            raise ValueError(f"encoder.vit: init must be 'xavier' or 'trunc_normal', got {init!r}")
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, strict_img_size=False)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid, grid), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path)
        self.norm = LayerNorm(embed_dim)
        if init == "xavier":
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(self.patch_embed.proj.bias)
            self.apply(partial(_init_weights, scheme="xavier"))
            if self.cls_token is not None:
                nn.init.normal_(self.cls_token, std=0.02)
        else:
            self.apply(partial(_init_weights, scheme="trunc_normal"))
            if self.cls_token is not None:
                trunc_normal_(self.cls_token, std=0.02)

    def _pos(self, h: int, w: int) -> Tensor:
        gh, gw = h // self.patch_size, w // self.patch_size
        if gh * gw == self.pos_embed.shape[0] and gh == gw:
            return self.pos_embed
        return sincos_pos_embed_2d(self.embed_dim, gh, gw).to(self.pos_embed)

    def forward(self, image: Tensor, keep: Tensor | None = None) -> ViTOutput:
        lead = image.shape[:-3]
        x = self.patch_embed(image.reshape(-1, *image.shape[-3:]))  # (B, L, D)
        x = x + self._pos(*image.shape[-2:])
        if keep is not None:
            x = gather_tokens(x, keep.reshape(-1, keep.shape[-1]))  # (B, K, D): only kept tokens go on
        if self.cls_token is not None:  # cls position embedding is the zero vector (MAE), so none is added
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return ViTOutput(x.reshape(*lead, *x.shape[1:]), pooled.reshape(*lead, -1))


@block("head.mae_decoder")
class MAEDecoder(nn.Module):
    """MAE's lightweight decoder (``models_mae.py · forward_decoder``): pixels of every patch.

    ``decoder_embed`` (D→d) → append ``L−K`` mask tokens → unshuffle with ``restore`` → [cls back in front]
    → + fixed sin-cos position → blocks → norm → ``decoder_pred`` (d → p²·3) → drop cls →
    ``(B, L, p²·3)`` in ``patchify`` order (h, w, p, q, c).

    Args:
        in_dim: the encoder's width D (MAE ViT-L 1024; must match ``encoder.vit``'s embed_dim).
        embed_dim: decoder width (512 for every MAE size, ``PRETRAIN.md``).
        depth: decoder blocks (8).
        num_heads: decoder heads (16).
        mlp_ratio: MLP ratio (4.0).
        img_size: image side in pixels (224); fixes the patch grid L.
        patch_size: patch side (16).
        cls_token: whether the encoder's tokens start with a cls token (MAE True); it is decoded and dropped.

    Inputs:
        tokens: (B, [1+]K, in_dim) encoder output on the kept tokens, in ``keep`` order.
        restore: (B, L) long, ``mask.random``'s ids_restore.
    """

    def __init__(self, *, in_dim: int = 1024, embed_dim: int = 512, depth: int = 8, num_heads: int = 16,
                 mlp_ratio: float = 4.0, img_size: int = 224, patch_size: int = 16, cls_token: bool = True):
        super().__init__()
        grid = _grid(img_size, patch_size, "head.mae_decoder")
        _check_dims("head.mae_decoder", embed_dim, num_heads, depth, mlp_ratio)
        if in_dim <= 0:
            raise ValueError(f"head.mae_decoder: in_dim must be positive, got {in_dim}")
        self.has_cls = cls_token
        self.decoder_embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d(embed_dim, grid, grid)
        if cls_token:
            pos = torch.cat([torch.zeros(1, embed_dim), pos])
        self.register_buffer("pos_embed", pos, persistent=False)
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, 0.0)
        self.norm = LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size * 3)
        self.apply(partial(_init_weights, scheme="xavier"))
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, restore: Tensor) -> Tensor:
        x = self.decoder_embed(tokens)  # (B, [1+]K, d)
        cls, x = (x[:, :1], x[:, 1:]) if self.has_cls else (x[:, :0], x)
        b, k, d = x.shape
        x = torch.cat([x, self.mask_token.expand(b, restore.shape[1] - k, d)], dim=1)  # shuffled order
        x = torch.cat([cls, gather_tokens(x, restore)], dim=1) + self.pos_embed  # (B, [1+]L, d) image order
        x = self.pred(self.norm(self.blocks(x)))
        return x[:, cls.shape[1]:]  # (B, L, p²·3)


@block("head.ijepa_predictor")
class IJEPAPredictor(nn.Module):
    """I-JEPA's predictor (``vision_transformer.py · VisionTransformerPredictor.forward``).

    ``Linear(D→d)`` + sin-cos position at the context indices → repeat ×npred (mask-major) → append one
    mask token + position per target index of each block → blocks → norm → keep the last K_p tokens →
    ``Linear(d→D)`` → ``(npred·B, K_p, D)``, row ``m·B + b`` = target block m of sample b, the order of
    ``ops.gather_targets`` (blocks/masking.py).

    Args:
        in_dim: the encoder's width D (I-JEPA ViT-H 1280).
        embed_dim: predictor width (384, ``configs/in1k_vith14_ep300.yaml · pred_emb_dim``).
        depth: predictor blocks (12, ``pred_depth``).
        num_heads: heads (the encoder's: 16 for ViT-H).
        mlp_ratio: MLP ratio (4.0).
        img_size: image side in pixels (224).
        patch_size: patch side (14 for ViT-H/14).
        drop_path: stochastic depth of the last block (0.0).

    Inputs:
        tokens: (B, K_e, in_dim) context-encoder output (no cls token).
        context: (B, K_e) long, the context indices the tokens came from.
        targets: (npred, B, K_p) long, the target blocks' indices.
    """

    def __init__(self, *, in_dim: int = 1280, embed_dim: int = 384, depth: int = 12, num_heads: int = 16,
                 mlp_ratio: float = 4.0, img_size: int = 224, patch_size: int = 14, drop_path: float = 0.0):
        super().__init__()
        grid = _grid(img_size, patch_size, "head.ijepa_predictor")
        _check_dims("head.ijepa_predictor", embed_dim, num_heads, depth, mlp_ratio)
        if in_dim <= 0 or not 0.0 <= drop_path < 1.0:
            raise ValueError(f"head.ijepa_predictor: need in_dim > 0 and drop_path in [0, 1), got {in_dim}, "
                             f"{drop_path}")
        self.embed = nn.Linear(in_dim, embed_dim)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid, grid), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path)
        self.norm = LayerNorm(embed_dim)
        self.proj = nn.Linear(embed_dim, in_dim)
        self.apply(partial(_init_weights, scheme="trunc_normal"))
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, context: Tensor, targets: Tensor) -> Tensor:
        npred, b, kp = targets.shape
        pos = self.pos_embed.expand(b, -1, -1)  # (B, L, d)
        x = self.embed(tokens) + gather_tokens(pos, context)  # (B, K_e, d)
        x = x.repeat(npred, 1, 1)  # (npred·B, K_e, d), mask-major like I-JEPA's x.repeat(len(masks), 1, 1)
        queries = self.mask_token + gather_tokens(pos.repeat(npred, 1, 1), targets.reshape(npred * b, kp))
        x = self.norm(self.blocks(torch.cat([x, queries], dim=1)))
        return self.proj(x[:, -kp:])  # (npred·B, K_p, D)


@block("ops.layer_norm")
class TokenLayerNorm(nn.Module):
    """Layer norm over the last axis without affine parameters (I-JEPA ``train.py · forward_target``:
    ``F.layer_norm(h, (h.size(-1),))`` on top of the target encoder's own final norm).

    Args:
        eps: variance epsilon (``F.layer_norm``'s default 1e-5, as I-JEPA calls it).

    Inputs:
        x: (..., D).
    """

    def __init__(self, *, eps: float = 1e-5):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"ops.layer_norm: eps must be positive, got {eps}")
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=self.eps)


@block("encoder.beit")
class BEiTEncoder(nn.Module):
    """BEiT's masked-image-modelling backbone (``modeling_pretrain.py · forward_features``).

    patch-embed → masked positions replaced by a learnable mask token (``x·(1−w) + mask_token·w``) →
    prepend cls → blocks sharing one relative position bias, with layer-scale → norm. No absolute position
    embedding (BEiT's pre-training default ``use_abs_pos_emb=False, use_shared_rel_pos_bias=True``). The
    attention has q and v biases but no k bias (timm's BEiT block, as the official code).

    Args:
        img_size: image side in pixels (224); fixes the relative-position window.
        patch_size: patch side (16).
        embed_dim: width (BEiT-B 768).
        depth: blocks (12).
        num_heads: heads (12).
        mlp_ratio: MLP ratio (4.0).
        layer_scale: layer-scale init γ (0.1 for base, 1e-5 for large; README); 0 disables it.
        drop_path: stochastic depth of the last block (0.1, README).

    Inputs:
        image: (B, 3, H, W) float.
        mask: (B, L) float or bool, 1 = masked (``mask.block``'s mask); None masks nothing.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, layer_scale: float = 0.1, drop_path: float = 0.1):
        super().__init__()
        grid = _grid(img_size, patch_size, "encoder.beit")
        _check_dims("encoder.beit", embed_dim, num_heads, depth, mlp_ratio)
        if layer_scale < 0 or not 0.0 <= drop_path < 1.0:
            raise ValueError(f"encoder.beit: need layer_scale >= 0 and drop_path in [0, 1), got {layer_scale}, "
                             f"{drop_path}")
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.rel_pos_bias = timm_beit.RelativePositionBias((grid, grid), num_heads)
        rates = _drop_rates(drop_path, depth)
        self.blocks = nn.ModuleList([
            timm_beit.Block(embed_dim, num_heads, qkv_bias=True, mlp_ratio=mlp_ratio, drop_path=r,
                            init_values=layer_scale or None, norm_layer=LayerNorm) for r in rates])
        self.norm = LayerNorm(embed_dim)
        # BEiT init: trunc-normal(0.02) cut at ±0.02, residual projections divided by √(2·layer_id)
        # (modeling_pretrain.py · _init_weights, fix_init_weight).
        self.apply(partial(_init_weights, scheme="beit"))
        for t in (self.cls_token, self.mask_token):
            trunc_normal_(t, std=0.02, a=-0.02, b=0.02)
        with torch.no_grad():
            for layer_id, blk in enumerate(self.blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))

    def forward(self, image: Tensor, mask: Tensor | None = None) -> ViTOutput:
        x = self.patch_embed(image)  # (B, L, D)
        if mask is not None:
            w = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token * w
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        bias = self.rel_pos_bias()
        for blk in self.blocks:
            x = blk(x, shared_rel_pos_bias=bias)
        x = self.norm(x)
        return ViTOutput(x, x[:, 1:].mean(dim=1))  # BEiT's probes/fine-tuning mean-pool the patch tokens


@block("head.beit_lm")
class BEiTLMHead(nn.Module):
    """BEiT's ``lm_head``: visual-token logits at the masked positions only.

    The official code applies it to ``x[bool_masked_pos]`` (a variable number M of rows); here the masked
    positions come padded to a fixed N per sample (``mask.block``'s ``index``/``valid``), so shapes are
    static; padded rows are ignored by ``loss.masked_token_ce``.

    Args:
        in_dim: the encoder's width (768).
        vocab_size: visual vocabulary (8192, the DALL-E dVAE codebook).

    Inputs:
        tokens: (B, 1+L, in_dim) ``encoder.beit`` tokens (cls first).
        index: (B, N) long masked patch indices (``mask.block``'s index).
    """

    def __init__(self, *, in_dim: int = 768, vocab_size: int = 8192):
        super().__init__()
        if in_dim <= 0 or vocab_size <= 1:
            raise ValueError(f"head.beit_lm: need in_dim > 0 and vocab_size > 1, got {in_dim}, {vocab_size}")
        self.lm_head = nn.Linear(in_dim, vocab_size)
        trunc_normal_(self.lm_head.weight, std=0.02, a=-0.02, b=0.02)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, tokens: Tensor, index: Tensor) -> Tensor:
        return self.lm_head(gather_tokens(tokens[:, 1:], index))  # (B, N, vocab)
