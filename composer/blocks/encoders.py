"""Image encoders from timm, used as feature extractors (classifier removed, no pretrained download)."""
from __future__ import annotations

from typing import Literal

import timm
import torch
from torch import nn

from composer.blocks.registry import block
from composer.blocks.vit import ViTOutput


def fold_views(fn, x: torch.Tensor, image_dims: int = 3, views: str = "joint",
               empty_dim: int | None = None) -> torch.Tensor:
    """Apply ``fn`` to ``x`` with any leading view axes folded into the batch: (V, B, *img) → (V, B, *out).

    ``joint``: one forward for all views of one resolution, as DINO's MultiCropWrapper and SimCLR's 2N batch do
    (BatchNorm statistics are shared by the views). ``separate``: one forward per view, as MoCo v3 and BYOL call
    the encoder on each view (BatchNorm statistics per view).

    Zero views (DINO with ``local_crops: 0``) give an empty (0, B, empty_dim) without calling ``fn``: networks
    cannot run an empty batch (a ViT cannot reshape 0 elements) and BatchNorm must not see one.
    """
    lead = x.shape[: x.dim() - image_dims - 1]
    if not lead:
        return fn(x)
    if x.numel() == 0 and empty_dim is not None:
        return x.new_zeros(*x.shape[: x.dim() - image_dims], empty_dim)
    if views == "separate":
        return torch.stack([fold_views(fn, v, image_dims) for v in x.unbind(0)])
    out = fn(x.flatten(0, len(lead)))
    return out.unflatten(0, (*lead, x.shape[len(lead)]))


@block("encoder.timm")
class TimmEncoder(nn.Module):
    """Any timm model by name, without its classifier: images → pooled features.

    Inputs:
        x: images (B, 3, H, W), or views (V, B, 3, H, W) folded into one forward → (V, B, D).

    Output: (B, D) features, D = the model's ``num_features`` (2048 for resnet50, 384 for vit_small).

    Args:
        arch: timm model name, e.g. resnet50 (SimCLR, MoCo), vit_small_patch16_224 (DINO, MoCo v3 ViT-S),
            resnet18 for small runs. Weights are randomly initialised; nothing is downloaded.
        model_args: extra keyword arguments for ``timm.create_model`` (drop_path_rate, img_size,
            dynamic_img_size for DINO's 96 px local crops, zero_init_last ...).
        views: joint (one forward over all views: SimCLR, DINO) or separate (one forward per view, BatchNorm
            statistics per view: MoCo v3).
    """

    def __init__(self, *, arch: str, model_args: dict | None = None,
                 views: Literal["joint", "separate"] = "joint"):
        super().__init__()
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
            raise ValueError(f"encoder.timm: unknown timm model {arch!r}" + (f" (similar: {', '.join(close)})" if close else ""))
        args = dict(model_args or {})
        if args.pop("pretrained", False):
            raise ValueError("encoder.timm: pretrained weights would need a download; train from scratch")
        self.net = timm.create_model(arch, pretrained=False, num_classes=0, **args)
        self.arch = arch
        self.dim = self.net.num_features
        self.views = views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold_views(self.net, x, views=self.views, empty_dim=self.dim)


@block("encoder.timm_vit")
class TimmViTEncoder(nn.Module):
    """A timm Vision Transformer returning every token, with an optional learnt mask token (iBOT, SimMIM-style
    masked image modelling).

    patch-embed → patches where ``mask`` is 1 replaced by the mask token → [cls] + position embedding → blocks
    → norm: timm's ``VisionTransformer.forward_features`` with the replacement inserted before the position
    embedding, where iBOT puts it (bytedance/ibot · models/vision_transformer.py · prepare_tokens, mask_model:
    ``x[mask] = masked_embed`` on the patch embeddings, then cls and position). The mask token starts at zero
    (iBOT's ``masked_embed = zeros(1, embed_dim)``). ``pooled`` is timm's pooling of those tokens (the cls token
    for ``global_pool='token'``, the default), the feature the probes read.

    A leading view axis is folded into the batch (one forward per resolution, as iBOT's MultiCropWrapper):
    ``image (V, B, 3, H, W)`` with ``mask (V, B, L)`` gives ``tokens (V, B, 1+L, D)`` and ``pooled (V, B, D)``.

    Inputs:
        image: (B, 3, H, W) float, optionally with a leading view axis.
        mask: (B, L) float or bool, 1 = replace that patch by the mask token (``mask.block``'s mask), patches
            row-major on the ``H/p × W/p`` grid; None masks nothing.

    Output: ``tokens`` (B, 1+L, D) with the cls token first (timm's prefix tokens first in general) and
    ``pooled`` (B, D).

    Args:
        arch: a timm ViT name: vit_small_patch16_224 (iBOT ViT-S/16), vit_base_patch16_224, test_vit ...
        model_args: extra keyword arguments for ``timm.create_model`` (drop_path_rate, img_size, patch_size,
            dynamic_img_size for 96 px local crops ...).
        mask_token: give the encoder a learnt mask token (needed to pass ``mask``). iBOT's student: true.
    """

    def __init__(self, *, arch: str, model_args: dict | None = None, mask_token: bool = False):
        super().__init__()
        inner = TimmEncoder(arch=arch, model_args=model_args)
        self.net, self.arch, self.dim = inner.net, arch, inner.dim
        if not all(hasattr(self.net, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head")):
            raise ValueError(f"encoder.timm_vit: {arch!r} is not a timm VisionTransformer; use encoder.timm")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.dim)) if mask_token else None

    def _tokens(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        net = self.net
        x = net.patch_embed(x)  # (B, L, D), or (B, h, w, D) with dynamic_img_size
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("encoder.timm_vit: a mask was given but the block has no mask token "
                                 "(set mask_token: true)")
            hit = mask.reshape(*x.shape[:-1], 1).bool()
            x = torch.where(hit, self.mask_token.reshape(-1).to(x.dtype), x)
        x = net.norm_pre(net.patch_drop(net._pos_embed(x)))
        return net.norm(net.blocks(x))

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> ViTOutput:
        lead = image.shape[:-3]
        if image.numel() == 0:  # no local crops: nothing to run (a ViT cannot reshape an empty batch)
            return ViTOutput(image.new_zeros(*lead, 1, self.dim), image.new_zeros(*lead, self.dim))
        flat_mask = None if mask is None else mask.reshape(-1, mask.shape[-1])
        x = self._tokens(image.reshape(-1, *image.shape[-3:]), flat_mask)
        pooled = self.net.forward_head(x, pre_logits=True)
        return ViTOutput(x.reshape(*lead, *x.shape[1:]), pooled.reshape(*lead, -1))
