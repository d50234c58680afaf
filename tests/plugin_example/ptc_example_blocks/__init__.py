"""An example plugin for pretext-composer: VICReg's loss as a block (docs/plugins.md builds it step by step).

VICReg (Bardes, Ponce & LeCun, ICLR 2022), official code facebookresearch/vicreg · main_vicreg.py ·
VICReg.forward. Importing this module registers ``loss.vicreg_example``; the package's
``pretext_composer.blocks`` entry point makes ``ptc`` import it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from composer.blocks import block
from composer.runtime import collectives


@block("loss.vicreg_example")
class VICReg(nn.Module):
    """VICReg: invariance + variance + covariance of two branches' embeddings (Bardes et al. 2022, Eq. 6).

    The invariance term is a mean over the local batch; the variance and covariance terms use the batch
    gathered from every process with gradient (main_vicreg.py · FullGatherLayer), so W processes with batch N
    train as one process with batch W·N. Its update keeps a running mean of the embedding's per-dimension
    standard deviation (a collapse monitor, read as ``vicreg.std_ema``).

    Inputs:
        za: (N, D) embeddings of the first views.
        zb: (N, D) embeddings of the second views.

    Update:
        z: (N, D) embeddings (stopped) whose standard deviation enters the running mean.

    Args:
        sim_coeff: λ, weight of the invariance term (paper: 25).
        std_coeff: μ, weight of the variance term (paper: 25).
        cov_coeff: ν, weight of the covariance term (paper: 1).
        eps: ε inside the standard deviation √(Var + ε) (paper: 1e-4).
        momentum: m of the running std, s ← m·s + (1 − m)·mean_d std_d(z).
    """

    collapse_guard = "variance and covariance terms"  # the loss keeps each dimension's std up by itself

    def __init__(self, *, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 eps: float = 1e-4, momentum: float = 0.9):
        super().__init__()
        if min(sim_coeff, std_coeff, cov_coeff) < 0 or eps <= 0 or not 0 <= momentum <= 1:
            raise ValueError("loss.vicreg_example: coefficients must be >= 0, eps > 0 and momentum in [0, 1]")
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.eps, self.momentum = eps, momentum
        self.register_buffer("std_ema", torch.zeros(()))

    def forward(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        invariance = F.mse_loss(za, zb)
        xa, xb = collectives.gather_with_grad(za), collectives.gather_with_grad(zb)  # (W·N, D)
        n, d = xa.shape
        xa, xb = xa - xa.mean(dim=0), xb - xb.mean(dim=0)
        std_a, std_b = torch.sqrt(xa.var(dim=0) + self.eps), torch.sqrt(xb.var(dim=0) + self.eps)
        variance = F.relu(1 - std_a).mean() / 2 + F.relu(1 - std_b).mean() / 2
        cov_a, cov_b = xa.T @ xa / (n - 1), xb.T @ xb / (n - 1)
        off = ~torch.eye(d, dtype=torch.bool, device=za.device)
        covariance = cov_a[off].pow(2).sum() / d + cov_b[off].pow(2).sum() / d
        return self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance

    @torch.no_grad()
    def update(self, step: int, *, z: torch.Tensor) -> None:
        std = collectives.gather_no_grad(z).float().std(dim=0).mean()
        self.std_ema.mul_(self.momentum).add_(std, alpha=1 - self.momentum)

    @staticmethod
    def equations(ctx):
        """The lines ``ptc explain`` prints inside the loss call, with the graph's value names and sizes."""
        a, b = ctx.arg("za"), ctx.arg("zb")
        n, d = ctx.d("za", 0, "N"), ctx.d("za", 1, "D")
        return [(f"inv = mean ({a} − {b})²", "scalar"),
                (f"A, B = gather({a}), gather({b})   (all processes, with gradient), centred", f"W·{n} x {d} each"),
                (f"var = ½ mean_d relu(1 − √(Var A + ε)) + ½ mean_d relu(1 − √(Var B + ε)),   ε = {ctx.p('eps')}",
                 "scalar"),
                ("cov = Σ_{i≠j} C(A)_ij² / D + Σ_{i≠j} C(B)_ij² / D,   C(X) = XᵀX / (W·N − 1)", f"{d} x {d} each"),
                (f"loss = {ctx.p('sim_coeff')}·inv + {ctx.p('std_coeff')}·var + {ctx.p('cov_coeff')}·cov", "scalar")]

    @staticmethod
    def update_equations(ctx):
        return [(f"{ctx.block}.std_ema ← m·std_ema + (1 − m)·mean_d std_d(gather({ctx.arg('z')})),   "
                 f"m = {ctx.p('momentum')}", "scalar")]
