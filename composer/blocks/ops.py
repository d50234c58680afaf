"""Small stateless glue between blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from composer.blocks.registry import block


@block("ops.l2_normalize")
class L2Normalize(nn.Module):
    """x / max(‖x‖₂, eps) along the last dimension (MoCo normalises q and k before the loss and the queue).

    Inputs:
        x: (..., C)

    Output: (..., C), unit rows.

    Args:
        eps: lower bound of the norm (torch's F.normalize default 1e-12).
    """

    def __init__(self, *, eps: float = 1e-12):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"ops.l2_normalize: eps must be positive, got {eps}")
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=self.eps)


@block("ops.view")
class View(nn.Module):
    """One view of a view-stacked tensor: x[index] along the leading view axis.

    Inputs:
        x: (V, B, ...)

    Output: (B, ...)

    Args:
        index: the view to take, 0 ≤ index < V (negative counts from the end).
    """

    def __init__(self, *, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.index]
