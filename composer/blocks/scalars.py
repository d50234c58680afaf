"""Scalars: CLIP's learnable log logit-scale, SigLIP's log temperature and logit bias; scheduled constants
(iBOT's teacher temperatures)."""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime.schedules import Schedule


@block("ops.scalar")
class Scalar(nn.Module):
    """A learnable 0-d parameter, optionally clamped into ``[min, max]`` after every optimizer step.

    The clamp runs in ``update`` (after the step, under ``no_grad``) as open_clip's training loop does
    (``unwrap_model(model).logit_scale.clamp_(0, math.log(100))``, open_clip_train/train.py · train_one_epoch);
    ``forward`` only returns the parameter, so gradients flow through it unclamped within a step.

    Typical values:
    CLIP log logit scale ``init: 2.659260`` (ln(1/0.07), openai/CLIP · clip/model.py · CLIP.__init__),
    ``min: 0.0, max: 4.605170`` (ln 100); SigLIP log temperature ``init: 2.302585`` (log 10) and bias
    ``init: -10.0`` (big_vision SigLIP_demo ``temperature_init=10, bias_init=-10``; open_clip main.py
    ``init_logit_scale=log(10), init_logit_bias=-10``), no bounds in big_vision (open_clip still clamps the
    scale to [0, ln 100]).

    Args:
        init: initial value of the parameter.
        min: lower bound applied after each optimizer step; none by default.
        max: upper bound applied after each optimizer step; none by default.
    """

    def __init__(self, *, init: float = 0.0, min: float | None = None, max: float | None = None):  # noqa: A002
        super().__init__()
        if not math.isfinite(init):
            raise ValueError(f"ops.scalar: init must be a finite number, got {init}")
        if min is not None and max is not None and min > max:
            raise ValueError(f"ops.scalar: min ({min}) must not exceed max ({max})")
        if (min is not None and init < min) or (max is not None and init > max):
            raise ValueError(f"ops.scalar: init {init} lies outside [{min}, {max}]")
        self.min = None if min is None else float(min)
        self.max = None if max is None else float(max)
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> Tensor:
        return self.value

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Clamp into ``[min, max]`` (after optimizer step ``step``)."""
        if self.min is not None or self.max is not None:
            self.value.clamp_(min=self.min, max=self.max)


@block("ops.schedule")
class ScheduledValue(nn.Module):
    """A fixed (not learnt) scalar that follows a schedule over the run, read by an expression: iBOT's teacher
    temperatures, or any coefficient that warms up.

    ``forward()`` → 0-d float32 tensor, the value for the current optimizer step. The value sits in a buffer that
    ``update`` advances after each step (as ``loss.dino``'s teacher temperature), so ``forward`` reads no Python
    number that changes during the run (that would recompile under ``torch.compile``) and the value is saved
    with the checkpoint.

    Typical values: iBOT (bytedance/ibot · main_ibot.py · iBOTLoss) teacher temperature
    ``{linear: [0.04, 0.07], until: 30ep}`` (README ViT-S/16: ``--warmup_teacher_temp 0.04 --teacher_temp 0.07
    --warmup_teacher_temp_epochs 30``: ``np.linspace`` over 30 epochs, then constant) and patch temperature
    the same (``--warmup_teacher_patch_temp 0.04 --teacher_patch_temp 0.07``).

    Args:
        value: a number or a schedule (``{linear: [a, b], until: 30ep}``, ``{cosine: [a, b]}`` ...).
    """

    def __init__(self, *, value: Schedule = 1.0):
        super().__init__()
        try:
            self.schedule = Schedule.parse(value)
        except ValueError as e:
            raise ValueError(f"ops.schedule: value: {e}") from None
        self.register_buffer("now", torch.tensor(_at_start(self.schedule), dtype=torch.float32))

    def forward(self) -> Tensor:
        return self.now

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step ``step`` (0-based): hold the value of step ``step + 1``, the next forward's."""
        if not self.schedule.is_constant and self.schedule.total_steps is None:
            raise RuntimeError("ops.schedule: the schedule is not bound to the run; call "
                               "bind_schedules(total_steps, steps_per_epoch) before training")
        self.now.fill_(self.schedule.at(step + 1))


def _at_start(schedule: Schedule) -> float:
    """The value at step 0, which needs no run length; an unbound copy is bound to one step."""
    if schedule.is_constant or schedule.total_steps is not None:
        return schedule.at(0)
    return dataclasses.replace(schedule).bind(1, 1).at(0)
