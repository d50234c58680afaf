"""Precision helpers: losses compute in float32 even inside a bf16 autocast region."""
from __future__ import annotations

import contextlib

import torch

_AUTOCAST_DEVICES = {"cpu", "cuda", "xpu", "mps", "hpu"}


def float32_region(device: torch.device | str):
    """A context with autocast disabled on ``device`` (a no-op on devices without autocast, such as ``meta``,
    where the validator's dry run executes losses)."""
    kind = torch.device(device).type
    if kind in _AUTOCAST_DEVICES:
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()
