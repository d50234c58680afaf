"""BEiT's masked image modelling loss (Bao et al. 2021, arXiv:2106.08254).

Official code: microsoft/unilm · beit/engine_for_pretraining.py · train_one_epoch::

    input_ids = d_vae.get_codebook_indices(images).flatten(1)      # (N, L) visual tokens, no grad
    labels = input_ids[bool_masked_pos]                            # (M,)
    outputs = model(samples, bool_masked_pos, return_all_tokens=False)   # (M, vocab)
    loss = nn.CrossEntropyLoss()(outputs, labels)                  # mean over the M masked tokens

Here the M masked positions arrive padded to a fixed N per sample (``mask.block``'s ``index``/``valid``), so
the mean runs over the valid entries only; the value is the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime.precision import float32_region


@block("loss.masked_token_ce")
class MaskedTokenCE(nn.Module):
    """Cross-entropy of the predicted visual tokens at the masked positions, mean over masked tokens.

    Computed in float32. The token ids come from a frozen tokenizer (a ``!sg`` edge in the graph).

    Inputs:
        logits: (B, N, V) predictions at ``index`` (``head.beit_lm``).
        ids: (B, L) long visual-token ids of every patch (the tokenizer's output).
        index: (B, N) long masked patch indices (``mask.block``'s index).
        valid: (B, N) 1 for a real masked index, 0 for padding (``mask.block``'s valid).
    """

    collapse_guard = "a reconstruction target"  # a fixed target cannot collapse (composer.graph.collapse)

    def forward(self, logits: Tensor, ids: Tensor, index: Tensor, valid: Tensor) -> Tensor:
        if logits.ndim != 3 or index.shape != logits.shape[:2] or valid.shape != index.shape \
                or ids.ndim != 2 or ids.shape[0] != logits.shape[0]:
            raise ValueError(f"loss.masked_token_ce: expected logits (B, N, V), ids (B, L), index (B, N), "
                             f"valid (B, N); got {tuple(logits.shape)}, {tuple(ids.shape)}, "
                             f"{tuple(index.shape)}, {tuple(valid.shape)}")
        with float32_region(logits.device):
            labels = torch.gather(ids.long(), 1, index)  # (B, N)
            ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
            w = valid.float().flatten()
            return (ce * w).sum() / w.sum()
