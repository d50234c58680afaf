"""Collectives used by blocks, all no-ops on one process.

Built on ``torch.distributed._functional_collectives``, torch's own autograd-aware collectives, which also trace
under ``torch.compile`` (``torch.distributed.nn.functional`` is deprecated in torch 2.14 and fails under compile).

Gradient rule: DDP averages gradients over ranks. A gather *with* gradient sums the
gradients of every rank's copy in backward (a reduce-scatter), so with DDP's mean the applied gradient is the
gradient of the mean of the per-rank local losses: N processes with batch B equal 1 process with batch N·B.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _group():
    return dist.group.WORLD


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) from every rank along dim 0 → (W·N, ...); backward sums into each rank's slice.

    For in-batch negatives (SimCLR, MoCo v3's queries' peers, CLIP local loss, SigLIP gather).
    """
    if not is_distributed():
        return x
    return fc.all_gather_single(x.contiguous(), 0, _group())


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) from every rank along dim 0 → (W·N, ...), without gradient (queues, keys)."""
    if not is_distributed():
        return x
    return fc.all_gather_single(x.detach().contiguous(), 0, _group())


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (no gradient through other ranks): the DINO centre, GLIP's positive count."""
    if not is_distributed():
        return x
    return fc.all_reduce(x.contiguous(), "sum", _group())


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (for logging the global loss)."""
    if not is_distributed():
        return x
    return fc.all_reduce(x.detach().contiguous(), "sum", _group()) / world_size()


def all_to_all_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Split ``x`` (W·n, ...) into W blocks, send block j to rank j; backward sends gradients back.

    The building block of SigLIP's exchange of text blocks between ranks.
    """
    if not is_distributed():
        return x
    return fc.all_to_all_single_autograd(x.contiguous(), None, None, _group())


@torch.no_grad()
def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``x`` from rank ``src`` on every rank (MoCo's shuffle-BN permutation)."""
    if not is_distributed():
        return x
    return fc.broadcast(x.contiguous(), src, _group())
