"""SimCLR's NT-Xent loss at the official scale (Chen et al. 2020, arXiv:2002.05709).

Official code: google-research/simclr · objective.py · add_contrastive_loss (tf2/objective.py is the same)::

    h1, h2 = split(l2_normalize(hidden))                   # (N, d) each, view 1 first
    h1_large, h2_large = cross_replica_concat(h1, h2)      # (G, d), gradient flows back (cross_replica_sum)
    labels = one_hot(r*N + arange(N), 2G); masks = one_hot(r*N + arange(N), G)
    aa = h1 h1_large^T / tau - 1e9 * masks                  # self-similarity pushed to -1e9, not deleted
    bb = h2 h2_large^T / tau - 1e9 * masks
    ab = h1 h2_large^T / tau;  ba = h2 h1_large^T / tau
    loss = CE([ab | aa], labels) + CE([ba | bb], labels)    # each a mean over the N local rows; a SUM of two

The PyTorch ports (lightly ``NTXentLoss``, solo-learn ``simclr_loss_func``) return half of this value; the
factor matters under LARS, whose trust ratio compares gradient and weight norms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime import collectives
from composer.runtime.precision import float32_region

LARGE_NUM = 1e9  # objective.py · LARGE_NUM


@block("loss.nt_xent")
class NTXent(nn.Module):
    """SimCLR's normalised-temperature cross-entropy over in-batch negatives from every process.

    Both views are L2-normalised here (``tf.math.l2_normalize``: ``x / sqrt(max(|x|^2, 1e-12))``, i.e.
    ``F.normalize`` with eps 1e-6), gathered from all processes with gradient (``composer.runtime.collectives.gather_with_grad``,
    the analogue of TF's ``tpu_cross_replica_concat``), and each local row is classified against the 2G-1 other
    embeddings of the global batch. Returns the official ``loss_a + loss_b``. With DDP's gradient mean,
    W processes of N rows give the gradient of one process with G = W*N rows. Computed in float32.

    Args:
        temperature: tau. ImageNet 0.1 (simclr README command ``--temperature=0.1``); CIFAR-10 0.5 (README
            CIFAR command); google-research/simclr · run.py · flag ``temperature``.

    Inputs:
        z: (2, N, D) projection-head outputs of the two views (view axis first; ``z[0]`` is h1).
    """

    collapse_guard = "negatives"  # the loss is its own guard against collapse (composer.graph.collapse)

    def __init__(self, *, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"loss.nt_xent: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 3 or z.shape[0] != 2:
            raise ValueError(f"loss.nt_xent: expected z (2, N, D) with the two views first, got {tuple(z.shape)}")
        with float32_region(z.device):
            h = F.normalize(z.float(), dim=-1, eps=1e-6)  # == tf.math.l2_normalize (epsilon 1e-12 on |x|^2)
            h1, h2 = h[0], h[1]  # (N, D)
            n = h1.shape[0]
            # one gather for both views: (N, 2, D) -> (G, 2, D); backward sums every rank's gradient into ours
            h_large = collectives.gather_with_grad(h.transpose(0, 1))
            h1_large, h2_large = h_large[:, 0], h_large[:, 1]  # (G, D)
            g = h1_large.shape[0]
            labels = torch.arange(n, device=h.device) + n * collectives.rank()  # column of the positive in [ab | aa]
            mask = F.one_hot(labels, g).to(h.dtype)  # (N, G): own column in aa / bb
            tau = self.temperature
            aa = h1 @ h1_large.T / tau - LARGE_NUM * mask
            bb = h2 @ h2_large.T / tau - LARGE_NUM * mask
            ab = h1 @ h2_large.T / tau
            ba = h2 @ h1_large.T / tau
            loss_a = F.cross_entropy(torch.cat([ab, aa], dim=1), labels)
            loss_b = F.cross_entropy(torch.cat([ba, bb], dim=1), labels)
            return loss_a + loss_b
