"""Momentum (EMA) teachers: a frozen copy of another block, moved towards it after every optimizer step."""
from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from composer.blocks.registry import REBUILD_ATTRIBUTE, BlockRef, block
from composer.runtime import collectives
from composer.runtime.schedules import Schedule


@block("teacher.ema")
class EMATeacher(nn.Module):
    """A copy of ``source`` whose parameters follow it: ξ ← m·ξ + (1 − m)·θ after each optimizer step.

    Only parameters are averaged; buffers (BatchNorm running statistics) evolve through the teacher's own
    forward passes, as in every official implementation. By default the copy starts identical to the source
    (DINO loads the student's state; MoCo copies encoder_q); ``init: independent`` starts it from a second,
    independent initialisation of the source block instead (BYOL: byol_experiment.py · _make_initial_state
    initialises the target with its own random key). It never requires grad, so DDP leaves it out of its
    gradient buckets (and broadcasts rank 0's initialisation with the rest of the model).

    Timing: MoCo v1/v2/v3 update the key encoder inside forward, before computing keys; DINO and I-JEPA update
    after the optimizer step. Both give the same teacher at every step except the no-op update at step 0, so
    one post-step rule serves all.

    Inputs and output: those of ``source`` (the teacher is called like the block it copies).

    Args:
        source: the block to copy and follow (e.g. encoder, projector).
        momentum: m, a number or a schedule. MoCo v1/v2 0.999 constant; MoCo v3 {cosine: [0.99, 1.0]};
            DINO {cosine: [0.996, 1.0]}; I-JEPA {linear: [0.996, 1.0]}.
        mode: train (the copy follows the model's mode: MoCo's key encoder uses batch statistics) or eval
            (always in eval mode: DINO builds its ViT teacher without drop path, which eval mode reproduces).
        init: copy (the source's initial weights: MoCo, DINO, I-JEPA) or independent (the source block built
            once more from its own graph parameters, with fresh random weights: BYOL).
        momentum_at: which step's momentum the post-step update uses. completed: m(t) after optimizer step t
            (DINO, I-JEPA, BYOL's target_ema(global_step) after the update). next: m(t+1), the value MoCo v3 applies inside the forward of iteration t+1 before
            computing its keys (builder.py · MoCo.forward), so a scheduled momentum is not one step late.
    """

    ports_follow_source = True

    def __init__(self, *, source: BlockRef, momentum: Schedule = 0.996, mode: Literal["train", "eval"] = "train",
                 momentum_at: Literal["completed", "next"] = "completed",
                 init: Literal["copy", "independent"] = "copy"):
        super().__init__()
        if not isinstance(source, nn.Module):
            raise ValueError(f"teacher.ema: source must be a block, got {source!r}")
        self.momentum = Schedule.parse(momentum)
        if not 0.0 <= self.momentum.start <= 1.0 or not 0.0 <= self.momentum.end <= 1.0:
            raise ValueError(f"teacher.ema: momentum must lie in [0, 1], got {self.momentum}")
        if init == "independent":
            rebuild = getattr(source, REBUILD_ATTRIBUTE, None)
            if rebuild is None:
                raise ValueError("teacher.ema: init independent needs a source block built from a graph (its "
                                 "constructor parameters are not known)")
            self.module = rebuild()
            if [p.shape for p in self.module.parameters()] != [p.shape for p in source.parameters()]:
                raise ValueError("teacher.ema: init independent built a block whose parameters differ from the "
                                 "source's")
        else:
            self.module = copy.deepcopy(source)
        self.module.requires_grad_(False)
        self.mode = mode
        self.offset = 1 if momentum_at == "next" else 0
        object.__setattr__(self, "source", source)  # a reference, not a submodule: its weights are the student's

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode == "eval":
            self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, step: int) -> None:
        m = self.momentum.at(step + self.offset)
        teacher = [p for p in self.module.parameters()]
        student = [p.detach() for p in self.source.parameters()]
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, student, alpha=1.0 - m)


@block("teacher.ema_shuffled")
class ShuffledEMATeacher(EMATeacher):
    """An EMA teacher run on a batch shuffled across ranks: MoCo v1/v2's shuffle-BN.

    With several processes, the key encoder's BatchNorm would otherwise see the same images as the query encoder
    on each rank, and the model could "cheat" through the batch statistics (MoCo section 3.3). Before the forward
    the batch is gathered from every rank, permuted with one permutation drawn on rank 0 and broadcast, and each
    rank encodes its slice; afterwards the outputs are gathered and un-permuted (builder.py ·
    _batch_shuffle_ddp, _batch_unshuffle_ddp). All gathers are gradient-free: the key branch is stop-gradient.
    On one process this is the plain EMA teacher.

    Inputs:
        x: (N, ...) the local batch (no view axis).

    Output: the source block's output for ``x``, rows in the original order.

    Args:
        source: the block to copy and follow (the encoder).
        momentum: m (MoCo v1/v2: 0.999).
        mode: train or eval, as for teacher.ema.
        momentum_at: completed or next, as for teacher.ema (MoCo v1/v2's constant momentum makes them equal).
        init: copy (MoCo: the key encoder starts as a copy of the query encoder) or independent, as for teacher.ema.
    """

    def forward(self, x):
        if not collectives.is_distributed():
            return self.module(x)
        world, rank = collectives.world_size(), collectives.rank()
        everything = collectives.gather_no_grad(x)
        order = collectives.broadcast(torch.randperm(everything.shape[0], device=x.device))
        out = self.module(everything[order.view(world, -1)[rank]])
        restore = torch.argsort(order)
        return collectives.gather_no_grad(out)[restore.view(world, -1)[rank]]
