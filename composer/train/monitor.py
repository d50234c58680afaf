"""Collapse monitors on the embeddings of a training batch.

- ``embedding_std``: the per-dimension standard deviation of the L2-normalised embeddings, averaged over
  dimensions (SimSiam, Chen & He 2021, section 4.1). Healthy embeddings spread over the sphere give about
  ``1/sqrt(D)``; complete collapse to one point gives 0. Logged with that reference (``std_ratio`` = std·sqrt(D)).
- ``effective_rank``: RankMe (Garrido et al. 2023): ``exp(entropy(σ / Σσ))`` of the singular values σ of the
  (N, D) embedding matrix; between 1 (every embedding on one line) and min(N, D) (all directions used).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """``z``: (N, D) embeddings → mean over D of the std over N of ``normalize(z)``."""
    z = F.normalize(z.detach().float().reshape(-1, z.shape[-1]), dim=1)
    if z.shape[0] < 2:
        return float("nan")
    return float(z.std(dim=0).mean())


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """``z``: (N, D) embeddings → RankMe ``exp(−Σ p_k log p_k)``, ``p = σ / Σσ + eps``."""
    z = z.detach().float().reshape(-1, z.shape[-1])
    s = torch.linalg.svdvals(z)
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_of(output_values: dict, spec) -> torch.Tensor | None:
    """The training embedding of a step: the first flow value computed by the graph's ``embedding`` block,
    as (N, D) (a named output's ``pooled`` field; a leading view axis folded into N). None if there is none."""
    name = getattr(spec, "embedding", None)
    if name is None:
        return None
    for node_name, node in spec.nodes.items():
        if node.kind == "call" and node.block == name and node_name in output_values:
            value = output_values[node_name]
            value = getattr(value, "pooled", value)
            if isinstance(value, torch.Tensor) and value.ndim >= 2:
                return value.reshape(-1, value.shape[-1])
    return None


def collapse_scalars(z: torch.Tensor) -> dict[str, float]:
    """The monitors as TensorBoard scalars."""
    std = embedding_std(z)
    return {"collapse/std": std, "collapse/std_ratio": std * math.sqrt(z.shape[-1]),
            "collapse/rank": effective_rank(z)}
