"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv:2303.15343).

Official code: google-research/big_vision · big_vision/trainers/proj/image_text/siglip.py · loss_fn, and
models/proj/image_text/two_towers.py (normalisation ``z / (norm(z) + 1e-8)``)::

    logits = zimg @ ztxt.T * exp(t') + b                     # (n, n) on the global batch
    m1_diag1 = -ones + 2 * eye(n)                            # +1 on matching pairs, -1 elsewhere
    nll = -sum(log_sigmoid(m1_diag1 * logits), axis=-1)      # sum over texts
    loss = mean(nll)                                         # mean over images: a pair sum divided by n, not n^2

Across processes (big_vision _deprecated_contrastive.py · sigmoid_loss / chunked_sigmoid_loss; open_clip
SigLipLoss): each rank scores its N images against its own N texts (labels +-1) and against every other rank's
text block (all negatives), with the text blocks' gradients sent back to their owners; DDP's gradient mean then
equals the single-process gradient on the concatenated batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime import collectives
from composer.runtime.precision import float32_region


@block("loss.siglip")
class SigLIPLoss(nn.Module):
    """SigLIP: an independent binary classification of every (image, text) pair of the global batch.

    ``L = -(1/N) sum_i sum_j log sigmoid(z_ij (exp(t') x_i . y_j + b))``, ``z_ij = +1`` iff text j is image i's
    caption, over the N local images and all G texts. Features are normalised as big_vision's two_towers does,
    ``z / (||z|| + 1e-8)`` (open_clip uses ``F.normalize``; the two differ by about 1e-8 relative).

    Text blocks travel with gradient (``composer.runtime.collectives.gather_with_grad``: G x E features, open_clip's ``gather``
    exchange); the logits are then built ``chunk_size`` texts at a time and never as a G x G matrix (at most
    N x chunk_size per chunk). Computed in float32 even under autocast.

    Args:
        chunk_size: texts scored per chunk; 0 or unset means one process's text block (N texts) per chunk, the
            granularity of big_vision's ``chunked_sigmoid_loss`` and open_clip's per-rank exchange. Smaller
            values bound peak memory further; the value is unchanged (up to float summation order).

    Inputs:
        image: (N, E) image embeddings.
        text: (N, E) text embeddings of the matching captions (row i describes image i).
        logit_scale: () t', the log temperature; ``exp(t')`` multiplies the cosine similarities (init log 10,
            from an ``ops.scalar`` block; big_vision ``temperature_init=10``).
        logit_bias: () b, the logit bias (init -10; big_vision SigLIP_demo ``bias_init=-10``).
    """

    collapse_guard = "negatives"  # the loss is its own guard against collapse (composer.graph.collapse)

    def __init__(self, *, chunk_size: int | None = None):
        super().__init__()
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 0):
            raise ValueError(f"loss.siglip: chunk_size must be a positive number of texts (or 0/unset for one "
                             f"block per process), got {chunk_size!r}")
        self.chunk_size = int(chunk_size or 0)

    def forward(self, image: Tensor, text: Tensor, logit_scale: Tensor, logit_bias: Tensor) -> Tensor:
        if image.ndim != 2 or image.shape != text.shape:
            raise ValueError(f"loss.siglip: expected image and text (N, E), got {tuple(image.shape)} and "
                             f"{tuple(text.shape)}")
        with float32_region(image.device):
            img = image.float()
            img = img / (img.norm(dim=-1, keepdim=True) + 1e-8)
            txt = text.float()
            txt = txt / (txt.norm(dim=-1, keepdim=True) + 1e-8)
            scale, bias = logit_scale.float().exp(), logit_bias.float()
            all_txt = collectives.gather_with_grad(txt)  # (G, E); backward returns other ranks' gradients to our texts
            n, g = img.shape[0], all_txt.shape[0]
            own = torch.arange(n, device=img.device) + n * collectives.rank()  # global column of each image's caption
            chunk = self.chunk_size or n
            total = img.new_zeros(())
            for start in range(0, g, chunk):
                cols = torch.arange(start, min(start + chunk, g), device=img.device)
                logits = scale * img @ all_txt[start:start + chunk].T + bias  # (N, c)
                signs = (own[:, None] == cols[None, :]).to(logits.dtype) * 2 - 1  # +1 matching pair, -1 otherwise
                total = total - F.logsigmoid(signs * logits).sum()
            return total / n
