"""Warnings for a loss that cannot vary: a contrastive temperature so large that every logit is the same.

InfoNCE, NT-Xent and MoCo v3's loss compare unit vectors, so their logits ``cos / T`` lie in ``[-1/T, 1/T]``.
With ``2 / T`` under ``MIN_SPAN`` the softmax is uniform to float32 precision: the loss stays at ``log K`` and its
gradients vanish, which trains nothing without any error (MoCo uses T = 0.07-0.2, SimCLR 0.1-0.5, MoCo v3 0.2-1).
"""
from __future__ import annotations

from composer.graph.spec import GraphSpec

COSINE_TEMPERATURE_LOSSES = {"loss.info_nce": "temperature", "loss.nt_xent": "temperature",
                             "loss.moco_v3": "temperature"}
MIN_SPAN = 1e-3  # logit range below which exp() differs from 1 by less than a float32 softmax resolves usefully


def flat_loss_warnings(spec: GraphSpec) -> list[str]:
    out = []
    for name, block in spec.blocks.items():
        param = COSINE_TEMPERATURE_LOSSES.get(block.kind)
        if param is None:
            continue
        t = block.params.get(param, block.info.params[param].default)
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 and 2 / t < MIN_SPAN:
            out.append(f"{spec.loc('blocks', name, param) or spec.path}: warning: node '{name}': the loss cannot "
                       f"vary: {param} {t:g} limits logits of unit vectors to a span of {2 / t:.2g}; expected a "
                       f"{param} below {2 / MIN_SPAN:g} (the papers use 0.07-1)")
    return out
