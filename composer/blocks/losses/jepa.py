"""I-JEPA's feature regression loss (Assran et al. 2023, arXiv:2301.08243).

Official code: facebookresearch/ijepa · src/train.py · train_step · loss_fn::

    loss = F.smooth_l1_loss(z, h)      # beta = 1, mean over every element
    loss = AllReduce.apply(loss)       # logging only: forward averages over ranks, backward is identity

The all-reduce changes no gradient (DDP averages the local losses' gradients), so it is left to logging.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime.precision import float32_region


@block("loss.smooth_l1")
class SmoothL1Loss(nn.Module):
    """Smooth-L1 (Huber with threshold β) between predicted and target features, mean over all elements.

    Per element: ``0.5·d²/β`` if ``|d| < β`` else ``|d| − 0.5·β``. Computed in float32. The target
    arrives through a ``!sg`` edge (I-JEPA's ``forward_target`` runs under ``no_grad``).

    Args:
        beta: threshold between the quadratic and linear parts (1.0, ``F.smooth_l1_loss``'s default, as
            I-JEPA calls it).

    Inputs:
        pred: (npred·B, K_p, D) predictor output (``head.ijepa_predictor``).
        target: same shape, layer-normed target-encoder tokens at the target blocks (``ops.gather_targets``).
    """

    def __init__(self, *, beta: float = 1.0):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"loss.smooth_l1: beta must be > 0, got {beta}")
        self.beta = beta

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"loss.smooth_l1: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        with float32_region(pred.device):
            return F.smooth_l1_loss(pred.float(), target.float(), beta=self.beta)
