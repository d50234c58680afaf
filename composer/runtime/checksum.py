"""The content checksum of a checkpoint state: ``sha256`` over every tensor's dtype, shape and bytes and every
key and plain value, in order (the ``checksum`` key itself left out).

It lives in the runtime so that every reader of run checkpoints can verify them: the trainer
(``composer.train.checkpoint``) now, blocks that load a trained model (``tokenizer.frozen``) too if they wish.
"""
from __future__ import annotations

import hashlib

import torch


def digest(state: dict) -> str:
    """``sha256:<hex>`` of ``state`` without its ``checksum`` key: for each value in order, its type tag and,
    for tensors, dtype, shape and raw bytes (read on the CPU); for dicts, each key then its value."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        t = t.cpu() if t.device.type != "cpu" else t
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():  # a uint8 view of the contiguous bytes: no copy for contiguous tensors (all state dicts)
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:  # int, float, str, bool, None, torch.Size ...: their repr is exact and stable
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
