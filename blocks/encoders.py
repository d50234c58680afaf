"""Image encoders from timm, used as feature extractors (classifier removed, no pretrained download)."""
from __future__ import annotations

import timm
import torch
from torch import nn

from blocks.registry import block


def fold_views(fn, x: torch.Tensor, image_dims: int = 3) -> torch.Tensor:
    """Apply ``fn`` to ``x`` with any leading view axes folded into the batch: (V, B, *img) → (V, B, *out).

    One forward for all views of one resolution, as DINO's MultiCropWrapper and SimCLR's 2N batch do
    (BatchNorm statistics are then shared by the views).
    """
    lead = x.shape[: x.dim() - image_dims - 1]
    if not lead:
        return fn(x)
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
            zero_init_last ...).
    """

    def __init__(self, *, arch: str, model_args: dict | None = None):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold_views(self.net, x)
