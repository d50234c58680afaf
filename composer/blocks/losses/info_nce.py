"""MoCo v1/v2 InfoNCE against a memory of negatives (He et al. 2020, arXiv:1911.05722; Chen et al. 2020,
arXiv:2003.04297).

Official code: facebookresearch/moco · moco/builder.py · MoCo.forward (logits and labels) and main_moco.py ·
train (``nn.CrossEntropyLoss``, mean over the local batch)::

    l_pos = einsum("nc,nc->n", q, k).unsqueeze(-1)          # (N, 1)
    l_neg = einsum("nc,ck->nk", q, queue.clone().detach())  # (N, K)
    logits = cat([l_pos, l_neg], dim=1) / T                  # (N, 1+K)
    loss = CE(logits, zeros(N))                              # the positive is always column 0

The queue there is stored ``(C, K)``; here negatives arrive as rows ``(K, C)``, the layout of ``memory.queue``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime.precision import float32_region


@block("loss.info_nce")
class InfoNCE(nn.Module):
    """MoCo's InfoNCE: one positive key per query against a queue of negative keys.

    The inputs are used as given: MoCo L2-normalises ``q`` and ``k`` inside the encoder and the queue holds
    normalised keys, so the graph normalises before this block (``ops.normalize``) and this block does not.
    The queue is detached as in the official code (``queue.clone().detach()``); the positive key's stop-gradient
    is the graph's ``!sg`` edge. Computed in float32 even under autocast.

    Args:
        temperature: softmax temperature T. MoCo v1 0.07, MoCo v2 0.2 (facebookresearch/moco · main_moco.py ·
            ``--moco-t``; README v2 command ``--moco-t 0.2``).

    Inputs:
        query: (N, C) normalised query features ``q``.
        positive: (N, C) normalised key of the same image ``k`` (arrives through ``!sg``).
        negatives: (K, C) the queue of normalised keys from previous batches, one key per row.
    """

    collapse_guard = "negatives"  # the loss is its own guard against collapse (composer.graph.collapse)

    def __init__(self, *, temperature: float = 0.2):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"loss.info_nce: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, query: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
        if query.shape != positive.shape or query.ndim != 2 or negatives.ndim != 2 \
                or negatives.shape[1] != query.shape[1]:
            raise ValueError(f"loss.info_nce: expected query (N, C), positive (N, C), negatives (K, C); got "
                             f"{tuple(query.shape)}, {tuple(positive.shape)}, {tuple(negatives.shape)}")
        with float32_region(query.device):
            q, k, queue = query.float(), positive.float(), negatives.detach().float()
            l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
            l_neg = q @ queue.T  # (N, K)
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature  # (N, 1+K)
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # positive = column 0
            return F.cross_entropy(logits, labels)
