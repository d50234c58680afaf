"""Memories: state read in forward and written only in ``update`` after the optimizer step."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from composer.blocks.registry import block
from composer.runtime import collectives


@block("memory.queue")
class Queue(nn.Module):
    """MoCo's queue of negative keys, a FIFO of the last ``size`` keys from all ranks.

    Read: ``forward()`` → (K, C), the keys as rows (the official code stores C×K and multiplies by it).
    Write: ``update(step, keys=...)`` after the optimizer step: keys (N, C) are gathered from every rank
    without gradient → (G, C), written at the pointer, and the pointer advances by G modulo K
    (moco/builder.py · _dequeue_and_enqueue). Every rank writes the same gathered keys, so the queues stay
    identical without DDP re-broadcasting them. Initialised with random unit vectors.

    Args:
        size: K, the number of keys; must be a multiple of the global batch G (MoCo asserts K % G == 0).
            MoCo v1/v2: 65536.
        dim: C, the key dimension (MoCo: 128).
    """

    def __init__(self, *, size: int = 65536, dim: int = 128):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory.queue: size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.size = size

    def forward(self) -> torch.Tensor:
        return self.queue

    @torch.no_grad()
    def update(self, step: int, *, keys: torch.Tensor) -> None:
        keys = collectives.gather_no_grad(keys.reshape(-1, keys.shape[-1]))
        g = keys.shape[0]
        if self.size % g:
            raise ValueError(f"memory.queue: size {self.size} is not a multiple of the global batch {g} "
                             f"(MoCo requires K % G == 0)")
        ptr = int(self.ptr)
        self.queue[ptr:ptr + g] = keys.to(self.queue.dtype)
        self.ptr.fill_((ptr + g) % self.size)


@block("memory.center")
class Center(nn.Module):
    """DINO's centre of the teacher outputs, an EMA of their batch mean over all ranks.

    Read: ``forward()`` → (1, K), used by the loss in its pre-update value.
    Write: ``update(step, teacher=...)``: C ← m·C + (1 − m)·Σ_rows t / (rows·W), with the row sum all-reduced
    over ranks (main_dino.py · DINOLoss.update_center). ``teacher`` is the raw teacher output (2, N, K).

    Args:
        dim: K, the output dimension of the DINO head (65536 in the paper).
        momentum: centre momentum m (DINO: 0.9).
    """

    def __init__(self, *, dim: int, momentum: float = 0.9):
        super().__init__()
        if dim < 1 or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"memory.center: need dim >= 1 and momentum in [0, 1], got {dim}, {momentum}")
        self.register_buffer("center", torch.zeros(1, dim))
        self.momentum = momentum

    def forward(self) -> torch.Tensor:
        return self.center

    @torch.no_grad()
    def update(self, step: int, *, teacher: torch.Tensor) -> None:
        rows = teacher.reshape(-1, teacher.shape[-1]).float()
        total = collectives.all_reduce_sum(rows.sum(dim=0, keepdim=True))
        batch_center = total / (rows.shape[0] * collectives.world_size())
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)
