"""Learnable scalars: CLIP's log logit-scale, SigLIP's log temperature and logit bias."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from composer.blocks.registry import block


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
