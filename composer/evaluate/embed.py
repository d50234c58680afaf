"""Probes of a graph's encoder on frozen features: the transform, the encoder call and the kNN / linear probes.

Used during training (the online kNN probe, on rank 0) and by ``ptc eval``. The encoder is the graph's
``embedding:`` block; a named output contributes its ``pooled`` field (``encoder.vit``).

Evaluation transform: the deterministic counterpart of the graph's training augmentation: resize the shorter
side to the view size S of the first augment block, centre-crop S×S (the whole image for square data) and
normalise with that block's mean and std (DINO's and MAE's eval pipelines with crop fraction 1). Without an
augment block, images are only scaled to [0, 1].
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.utils.data import Subset
from torchvision.transforms import v2

from composer.evaluate.probes import extract_features, knn_probe, linear_probe


def eval_transform(model) -> nn.Module:
    """uint8 (B, 3, H, W) → float (B, 3, S, S), normalised like the graph's first augment block."""
    for module in model.data_stage.modules():
        size = getattr(module, "size", None) or getattr(module, "global_size", None)
        mean, std = getattr(module, "mean", None), getattr(module, "std", None)
        if isinstance(size, int) and mean is not None and std is not None:
            return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size),
                               v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    return v2.ToDtype(torch.float32, scale=True)


class Embed(nn.Module):
    """The embedding block as a (B, 3, S, S) → (B, D) function (``pooled`` of a named output)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> Tensor:
        out = self.encoder(x)
        out = getattr(out, "pooled", out)
        return out.reshape(out.shape[0], -1)


@dataclasses.dataclass
class ProbeData:
    """A bank (training split) and queries (validation split), raw datasets of at most n samples each."""

    train: object
    val: object

    @classmethod
    def open(cls, spec: str, n_train: int | None, n_val: int | None, max_bad: int = 10) -> "ProbeData":
        """Unreadable images (up to ``max_bad`` in a row) are replaced by the next readable ones; ``skipped``
        then names them."""
        from composer.data.faults import SkipUnreadable
        from composer.data.spec import open_dataset
        train = SkipUnreadable(open_dataset(spec, "train"), max_bad)
        val = SkipUnreadable(open_dataset(spec, "val"), max_bad)
        if n_train is not None and n_train < len(train):
            train = Subset(train, range(n_train))
        if n_val is not None and n_val < len(val):
            val = Subset(val, range(n_val))
        return cls(train, val)

    @property
    def skipped(self) -> dict[str, str]:
        """``file: cause`` of the unreadable images replaced so far (both splits)."""
        found = {}
        for part in (self.train, self.val):
            found.update(getattr(part.dataset if isinstance(part, Subset) else part, "skipped", {}))
        return found


def features(model, data: ProbeData, device, batch_size: int = 256) -> tuple[Tensor, ...]:
    """(train_feats, train_labels, val_feats, val_labels) of the embedding block on ``data``."""
    embed, transform = Embed(model.embedding_module()), eval_transform(model)
    try:
        a = extract_features(embed, data.train, batch_size, transform, device)
        b = extract_features(embed, data.val, batch_size, transform, device)
    except (RuntimeError, TypeError) as e:  # a block that does not take images (a head, a loss, a store)
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"block {model.spec.embedding!r} cannot embed the probe's images "
                         f"({type(e).__name__}: {first})") from None
    return (*a, *b)


def run(model, data: ProbeData, probe: str = "knn", device=None, k: int = 20) -> float:
    """Top-1 accuracy in [0, 1] of the ``knn`` (k, T = 0.07) or ``linear`` probe on the embedding block."""
    train_x, train_y, val_x, val_y = features(model, data, device)
    if (train_y < 0).all():
        raise ValueError("the probe data has no class labels")
    if probe == "knn":
        return knn_probe(train_x, train_y, val_x, val_y, k=k)
    if probe == "linear":
        return linear_probe(train_x, train_y, val_x, val_y)
    raise ValueError(f"unknown probe {probe!r}; expected knn or linear")
