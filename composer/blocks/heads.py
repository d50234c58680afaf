"""Projection and prediction heads."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from composer.blocks.registry import block


@block("head.mlp")
class MLPHead(nn.Module):
    """A multi-layer perceptron over the last dimension; leading axes (views, batch) are folded together.

    Paper configurations:
      - MoCo v2 (builder.py · MoCo): dims [2048, 2048, 128], bias on, no norm.
      - SimCLR (model_util.py · projection_head): dims [2048, 2048, 2048, 128], bias off, hidden_norm batch,
        last_norm batch_no_beta (BN with γ only).
      - MoCo v3 (builder.py · _build_mlp): bias off, hidden_norm batch, projector last_norm batch_no_affine;
        R-50 projector [2048, 4096, 256], predictor [256, 4096, 256] with last_norm none.
      - BYOL (byol/utils/networks.py · MLP): projector [2048, 4096, 256] and predictor [256, 4096, 256],
        bias on, last_bias off, hidden_norm batch, last_norm none.
      - SimSiam (simsiam/builder.py · SimSiam): projector [2048, 2048, 2048, 2048], bias off, hidden_norm
        batch, last_norm batch_no_affine; predictor [2048, 512, 2048], bias off, last_bias on.
      - Barlow Twins (main.py · BarlowTwins): dims [2048, 8192, 8192, 8192], bias off, hidden_norm batch.
      - VICReg (main_vicreg.py · Projector): dims [2048, 8192, 8192, 8192], bias on, hidden_norm batch,
        last_bias off.

    Inputs:
        x: (..., dims[0])

    Output: (..., dims[-1])

    Args:
        dims: layer widths from input to output, at least two (one Linear per consecutive pair).
        hidden_norm: normalisation after each hidden Linear: none or batch (BatchNorm1d).
        last_norm: normalisation after the last Linear: none, batch, batch_no_affine (MoCo v3),
            batch_no_beta (SimCLR's center=False).
        bias: give the Linear layers a bias (MoCo v2 yes; SimCLR and MoCo v3 no).
        last_bias: give the last Linear a bias; null (default) follows ``bias``. BYOL's MLP has a bias in its
            hidden Linear only; SimSiam's predictor in its last Linear only;
            VICReg's expander in its hidden Linears only.
        activation: relu (MoCo, SimCLR) or gelu (DINO).
        views: with a leading view axis (V, N, D): joint (BatchNorm over all V·N rows: SimCLR's 2N batch) or
            separate (one pass per view: MoCo v3 calls its projector and predictor per view).
    """

    def __init__(self, *, dims: list[int], hidden_norm: Literal["none", "batch"] = "none",
                 last_norm: Literal["none", "batch", "batch_no_affine", "batch_no_beta"] = "none",
                 bias: bool = True, last_bias: bool | None = None, activation: Literal["relu", "gelu"] = "relu",
                 views: Literal["joint", "separate"] = "joint"):
        super().__init__()
        if len(dims) < 2 or any(int(d) < 1 for d in dims):
            raise ValueError(f"head.mlp: dims must list at least two positive widths, got {dims}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=bias if not last or last_bias is None else last_bias))
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
        self.views = views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.views == "separate" and x.dim() > 2:
            return torch.stack([self(v) for v in x.unbind(0)])
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.dims[-1])


@block("head.dino")
class DINOHead(nn.Module):
    """DINO's projection head: an MLP, L2 normalisation, then a weight-normalised linear layer to K prototypes.

    ``Linear(in, hidden) - GELU - Linear(hidden, hidden) - GELU - Linear(hidden, bottleneck)`` (BN off), then
    ``x / ‖x‖``, then ``last_layer = weight_norm(Linear(bottleneck, K, bias=False))`` with ``weight_g`` filled with
    1 and frozen when ``norm_last_layer`` (vision_transformer.py · DINOHead). Linears: trunc-normal std 0.02,
    bias 0. The trainer's ``freeze: {last_layer: 1ep}`` drops the last layer's gradients during the first epoch
    (main_dino.py · cancel_gradients_last_layer).

    Inputs:
        x: (..., in_dim) backbone features (the CLS token).

    Output: (..., out_dim) logits over the K prototypes.

    Args:
        in_dim: backbone width (ViT-S 384, ResNet-50 2048).
        out_dim: K, the number of prototypes (DINO 65536).
        hidden_dim: MLP width (2048).
        bottleneck_dim: width before the last layer (256).
        layers: number of MLP Linear layers (3).
        norm_last_layer: freeze the weight-norm gain at 1 (True by default; the README's best ViT-S/16 run uses
            false).
    """

    def __init__(self, *, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1 or layers < 1:
            raise ValueError("head.dino: dimensions and layers must be positive")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            mlp.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                mlp.append(nn.GELU())
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        z = torch.nn.functional.normalize(self.mlp(flat), dim=-1)
        return self.last_layer(z).reshape(*x.shape[:-1], self.out_dim)


@block("head.linear")
class LinearHead(nn.Module):
    """One Linear layer over the last dimension, optionally with unit-norm weight rows kept as a state update.

    SwAV's prototypes (src/resnet50.py · ResNet.prototypes): ``Linear(128, 3000, bias=False)`` whose rows
    (one per prototype) are L2-normalised under ``no_grad`` at the start of every iteration
    (main_swav.py · train, before the forward). Here the rows are normalised once at construction and again in
    ``update`` after every optimizer step, which gives the forward of every step the same weights; the gradient
    is the plain gradient with respect to the stored (unit-row) weights, as in the official in-place copy.
    Default init is torch's ``nn.Linear`` (kaiming-uniform), which SwAV leaves untouched.

    Inputs:
        x: (..., in_dim); leading axes (views, batch, queue rows) are kept.

    Output: (..., out_dim), e.g. SwAV's scores of the unit embeddings against the K prototypes.

    Args:
        in_dim: input width (SwAV feat_dim 128).
        out_dim: output width (SwAV nmb_prototypes 3000).
        bias: give the layer a bias (SwAV's prototypes: no).
        normalize_rows: keep each weight row at unit L2 norm (SwAV: yes); renormalised after every optimizer
            step, so a row that the optimizer moves is put back on the sphere before the next forward.
    """

    def __init__(self, *, in_dim: int, out_dim: int, bias: bool = True, normalize_rows: bool = False):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"head.linear: in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)
        self.normalize_rows = normalize_rows
        self.update(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Put every weight row back on the unit sphere (after optimizer step ``step``) when ``normalize_rows``."""
        if self.normalize_rows:
            w = self.linear.weight
            w.copy_(torch.nn.functional.normalize(w, dim=1))
