"""Official schedule functions, rewritten as independent references for the tests."""
from __future__ import annotations

import numpy as np


def dino_cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0):
    """facebookresearch/dino · utils.py · cosine_scheduler, as the official code computes it (bytedance/ibot ·
    utils.py · cosine_scheduler is the same function)."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, schedule))
