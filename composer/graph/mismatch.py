"""Shape mismatches in words: which layer of which block expected how many features, and which block gave what.

During the dry run every leaf module call (``nn.Linear``, a convolution, a norm) is pushed on a stack and popped
when it returns; when a block fails, the innermost module still on the stack is the layer that failed, and its
own declaration (``in_features``, ``in_channels``, ``num_features``, ``normalized_shape``) says what it expected.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class LeafTracker(contextlib.AbstractContextManager):
    """Records the modules that are running (entered, not yet returned) with their positional inputs."""

    def __init__(self):
        self.running: list[tuple[nn.Module, tuple]] = []
        self._handles = []

    def __enter__(self):
        def pre(module, args):
            self.running.append((module, args))

        def post(module, args, out):
            if self.running and self.running[-1][0] is module:
                self.running.pop()

        self._handles = [nn.modules.module.register_module_forward_pre_hook(pre),
                         nn.modules.module.register_module_forward_hook(post)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False

    def failing(self) -> tuple[nn.Module, tuple] | None:
        """The innermost module that entered and did not return (the one that raised)."""
        return self.running[-1] if self.running else None


def expectation(module: nn.Module, args: tuple) -> tuple[str, int | tuple, int | tuple, int] | None:
    """``(what, expected, got, axis)`` when ``module`` declares the size its input lacks, else None.

    ``axis`` is the input axis that carries the size (-1 for features, 1 for channels)."""
    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if x is None or x.dim() == 0:
        return None
    if isinstance(module, nn.Linear):
        return "features", module.in_features, x.shape[-1], -1
    if isinstance(module, nn.modules.conv._ConvNd) and x.dim() >= 2:
        axis = 1 if x.dim() == len(module.kernel_size) + 2 else 0
        return "channels", module.in_channels, x.shape[axis], axis
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and x.dim() >= 2:
        return "channels", module.num_features, x.shape[1], 1
    if isinstance(module, nn.GroupNorm) and x.dim() >= 2:
        return "channels", module.num_channels, x.shape[1], 1
    if isinstance(module, nn.LayerNorm):
        n = len(module.normalized_shape)
        return "features", tuple(module.normalized_shape), tuple(x.shape[-n:]), -1
    if isinstance(module, nn.MultiheadAttention):
        return "features", module.embed_dim, x.shape[-1], -1
    return None


def layer_name(block: nn.Module, module: nn.Module) -> str:
    for name, m in block.named_modules():
        if m is module:
            return name or "(the block itself)"
    return type(module).__name__


def parameter_holding(params: dict, value) -> str | None:
    """The block parameter whose value is (or lists) ``value``: ``dims[0]`` for ``dims: [64, 32, 16]``."""
    if not isinstance(value, int):
        return None
    for key, v in params.items():
        if v == value and not isinstance(v, bool):
            return key
        if isinstance(v, (list, tuple)) and value in v:
            return f"{key}[{list(v).index(value)}]"
    return None


def fmt(size) -> str:
    return "x".join(str(s) for s in size) if isinstance(size, tuple) else str(size)
