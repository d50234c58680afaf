"""Image encoders from timm, used as feature extractors (classifier removed, no pretrained download)."""
from __future__ import annotations

from typing import Literal

import timm
import torch
from torch import nn

from composer.blocks.registry import block


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
