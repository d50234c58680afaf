"""MoCo v3's symmetrised contrastive loss (Chen, Xie, He 2021, arXiv:2104.02057).

Official code: facebookresearch/moco-v3 · moco/builder.py · MoCo.contrastive_loss and MoCo.forward::

    def ctr(q, k):
        q, k = normalize(q, dim=1), normalize(k, dim=1)
        k = concat_all_gather(k)                          # (G, D), no gradient
        logits = q @ k.T / T                              # (N, G)
        labels = arange(N) + N * rank
        return CE(logits, labels) * (2 * T)
    loss = ctr(q1, k2) + ctr(q2, k1)                      # summed, not averaged
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime import collectives
from composer.runtime.precision import float32_region


@block("loss.moco_v3")
class MoCoV3Loss(nn.Module):
    """MoCo v3: each view's prediction classifies its momentum key of the other view among all G keys.

    Keys are gathered from every process without gradient (``composer.runtime.collectives.gather_no_grad``), as
    ``concat_all_gather`` does; the block also detaches them so one process behaves like many (the official keys
    come from the momentum encoder under ``no_grad`` and never carry gradient). The ``2T`` factor is the
    official one. Computed in float32 even under autocast.

    Args:
        temperature: T. ResNet-50 1.0 (``main_moco.py`` default ``--moco-t 1.0``), ViT 0.2 (CONFIG.md
            ``--moco-t=.2``); facebookresearch/moco-v3 · main_moco.py · argparse.

    Inputs:
        query: (2, N, D) predictor outputs of view 0 and view 1 (``q1``, ``q2``).
        key: (2, N, D) momentum-encoder outputs of view 0 and view 1 (``k1``, ``k2``), through ``!sg``.
    """

    collapse_guard = "negatives"  # the loss is its own guard against collapse (composer.graph.collapse)

    def __init__(self, *, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"loss.moco_v3: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        if query.ndim != 3 or query.shape[0] != 2 or key.shape != query.shape:
            raise ValueError(f"loss.moco_v3: expected query and key (2, N, D), got {tuple(query.shape)} and "
                             f"{tuple(key.shape)}")
        with float32_region(query.device):
            q = F.normalize(query.float(), dim=-1)
            k = F.normalize(key.detach().float(), dim=-1)
            k_all = collectives.gather_no_grad(k.transpose(0, 1)).detach()  # (G, 2, D): both views in one collective
            n = q.shape[1]
            labels = torch.arange(n, device=q.device) + n * collectives.rank()
            t = self.temperature

            def ctr(q_view: Tensor, k_view_all: Tensor) -> Tensor:
                return F.cross_entropy(q_view @ k_view_all.T / t, labels) * (2 * t)

            return ctr(q[0], k_all[:, 1]) + ctr(q[1], k_all[:, 0])
