"""Projection and prediction heads."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from blocks.registry import block


@block("head.mlp")
class MLPHead(nn.Module):
    """A multi-layer perceptron over the last dimension; leading axes (views, batch) are folded together.

    Paper configurations:
      - MoCo v2 (builder.py · MoCo): dims [2048, 2048, 128], bias on, no norm.
      - SimCLR (model_util.py · projection_head): dims [2048, 2048, 2048, 128], bias off, hidden_norm batch,
        last_norm batch_no_beta (BN with γ only).
      - MoCo v3 (builder.py · _build_mlp): bias off, hidden_norm batch, projector last_norm batch_no_affine;
        R-50 projector [2048, 4096, 256], predictor [256, 4096, 256] with last_norm none.

    Inputs:
        x: (..., dims[0])

    Output: (..., dims[-1])

    Args:
        dims: layer widths from input to output, at least two (one Linear per consecutive pair).
        hidden_norm: normalisation after each hidden Linear: none or batch (BatchNorm1d).
        last_norm: normalisation after the last Linear: none, batch, batch_no_affine (MoCo v3),
            batch_no_beta (SimCLR's center=False).
        bias: give the Linear layers a bias (MoCo v2 yes; SimCLR and MoCo v3 no).
        activation: relu (MoCo, SimCLR) or gelu (DINO).
    """

    def __init__(self, *, dims: list[int], hidden_norm: Literal["none", "batch"] = "none",
                 last_norm: Literal["none", "batch", "batch_no_affine", "batch_no_beta"] = "none",
                 bias: bool = True, activation: Literal["relu", "gelu"] = "relu"):
        super().__init__()
        if len(dims) < 2 or any(int(d) < 1 for d in dims):
            raise ValueError(f"head.mlp: dims must list at least two positive widths, got {dims}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out, bias=bias))
            last = i == len(dims) - 2
            if not last:
                if hidden_norm == "batch":
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True) if activation == "relu" else nn.GELU())
            elif last_norm != "none":
                bn = nn.BatchNorm1d(d_out, affine=last_norm != "batch_no_affine")
                if last_norm == "batch_no_beta":  # γ only: the shift is fixed at zero
                    bn.bias.requires_grad_(False)
                layers.append(bn)
        self.net = nn.Sequential(*layers)
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.dims[-1])
