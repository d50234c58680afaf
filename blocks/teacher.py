"""Momentum (EMA) teachers: a frozen copy of another block, moved towards it after every optimizer step."""
from __future__ import annotations

import copy

import torch
from torch import nn

from blocks.registry import BlockRef, block
from composer.schedule import Schedule


@block("teacher.ema")
class EMATeacher(nn.Module):
    """A copy of ``source`` whose parameters follow it: ξ ← m·ξ + (1 − m)·θ after each optimizer step.

    Only parameters are averaged; buffers (BatchNorm running statistics) evolve through the teacher's own
    forward passes, as in every official implementation (METHODS.md section 0). The copy starts identical to
    the source (DINO loads the student's state; MoCo copies encoder_q) and never requires grad, so DDP leaves
    it out of its gradient buckets.

    Timing: MoCo v1/v2/v3 update the key encoder inside forward, before computing keys; DINO and I-JEPA update
    after the optimizer step. Both give the same teacher at every step except the no-op update at step 0, so
    one post-step rule serves all (METHODS.md section 1).

    Inputs and output: those of ``source`` (the teacher is called like the block it copies).

    Args:
        source: the block to copy and follow (e.g. encoder, projector).
        momentum: m, a number or a schedule. MoCo v1/v2 0.999 constant; MoCo v3 {cosine: [0.99, 1.0]};
            DINO {cosine: [0.996, 1.0]}; I-JEPA {linear: [0.996, 1.0]}.
    """

    ports_follow_source = True

    def __init__(self, *, source: BlockRef, momentum: Schedule = 0.996):
        super().__init__()
        if not isinstance(source, nn.Module):
            raise ValueError(f"teacher.ema: source must be a block, got {source!r}")
        self.momentum = Schedule.parse(momentum)
        if not 0.0 <= self.momentum.start <= 1.0 or not 0.0 <= self.momentum.end <= 1.0:
            raise ValueError(f"teacher.ema: momentum must lie in [0, 1], got {self.momentum}")
        self.module = copy.deepcopy(source)
        self.module.requires_grad_(False)
        object.__setattr__(self, "source", source)  # a reference, not a submodule: its weights are the student's

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, step: int) -> None:
        m = self.momentum.at(step)
        teacher = [p for p in self.module.parameters()]
        student = [p.detach() for p in self.source.parameters()]
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, student, alpha=1.0 - m)
