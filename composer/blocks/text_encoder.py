"""CLIP's text transformer (Radford et al. 2021, arXiv:2103.00020), with open_clip's SigLIP and BERT-style options.

Official code: openai/CLIP · clip/model.py · CLIP.encode_text, ResidualAttentionBlock, initialize_parameters;
mlfoundations/open_clip · src/open_clip/transformer.py · TextTransformer (``no_causal_mask``, ``pool_type``,
``proj_bias``)::

    x = token_embedding(ids) + positional_embedding            # (B, T, W)
    x = transformer(x, attn_mask=causal)                       # pre-LN blocks: x + attn(ln_1 x); x + mlp(ln_2 x)
    x = ln_final(x)
    pooled = x[arange(B), ids.argmax(-1)] @ text_projection    # the EOT token (the largest id)
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.ranges import NON_NEGATIVE
from composer.blocks.registry import block
from composer.blocks.text import VOCAB_SIZE


class TextFeatures(NamedTuple):
    """A text tower's outputs."""

    pooled: Tensor  # (B, output_dim): the caption embedding
    tokens: Tensor  # (B, T, width): every token after ln_final (GLIP aligns regions with these)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, OpenAI CLIP's activation (clip/model.py · QuickGELU)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, MLP ratio 4."""

    def __init__(self, width: int, heads: int, activation: str):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.in_proj = nn.Linear(width, 3 * width)  # nn.MultiheadAttention's packed q, k, v
        self.out_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU() if activation == "quick_gelu" else nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.in_proj(self.ln_1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, T, W/heads)
        x = x + self.out_proj(a.transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.ln_2(x))


@block("encoder.text")
class TextTransformer(nn.Module):
    """Token + positional embedding, pre-LN transformer, final LayerNorm, pooling and linear projection.

    CLIP: causal mask, EOT pooling (``argmax`` of the ids), no projection bias. SigLIP (open_clip
    ViT-B-16-SigLIP.json): ``attention: bidirectional``, ``pool: last``, ``proj_bias: true``. GLIP's BERT is
    bidirectional over the real tokens only: ``attention: padding`` with the tokenizer's mask.

    Initialisation as clip/model.py · initialize_parameters: token embedding N(0, 0.02), positions N(0, 0.01),
    attention in-projection N(0, W^-1/2), out-projection and MLP output N(0, W^-1/2 (2L)^-1/2), MLP input
    N(0, (2W)^-1/2), projection N(0, W^-1/2), attention biases 0.

    Args:
        vocab_size: token ids are in [0, vocab_size) (258 for ``tokenizer.bytes``; CLIP's BPE 49408). ``auto``
            (the default in a graph): the vocabulary of the tokenizer block that computes ``ids``, read when the
            graph is loaded; a number written here must equal it (``ptc check``).
        context_length: T, the number of positions (CLIP 77; must equal the tokenizer's).
        width: transformer width W (CLIP ViT-B/32 512; text heads are W / 64 there).
        layers: transformer blocks L (CLIP 12).
        heads: attention heads; must divide ``width`` (CLIP 8 at width 512).
        output_dim: size of the pooled embedding E after the projection (CLIP ViT-B/32 512); 0 for no
            projection (pooled = the picked token's features, E = W; GLIP reads only the token features).
        attention: causal (CLIP: ``build_attention_mask``, -inf above the diagonal), bidirectional (SigLIP:
            every token sees every position, padding included) or padding (BERT, GLIP: every token sees the real
            tokens, mask from the ``mask`` input).
        pool: argmax (CLIP: the token at ``ids.argmax(-1)``, the EOT), last (SigLIP: the last position), or
            first (the SOT position, BERT's [CLS] place).
        proj_bias: give the projection a bias (SigLIP yes, CLIP no).
        activation: quick_gelu (OpenAI CLIP) or gelu (open_clip's non-OpenAI configs, SigLIP).

    Inputs:
        ids: (B, T) int64 token ids.
        mask: (B, T) optional, 1 on real tokens; required by ``attention: padding``.

    Output: ``TextFeatures(pooled (B, E), tokens (B, T, W))``; E = W when ``output_dim`` is 0.
    """

    ranges = {"output_dim": NON_NEGATIVE}  # 0: no projection (GLIP's BERT-style features)

    def __init__(self, *, vocab_size: int | Literal["auto"] = "auto", context_length: int = 77, width: int = 512,
                 layers: int = 12, heads: int = 8, output_dim: int = 512,
                 attention: Literal["causal", "bidirectional", "padding"] = "causal",
                 pool: Literal["argmax", "last", "first"] = "argmax", proj_bias: bool = False,
                 activation: Literal["quick_gelu", "gelu"] = "quick_gelu"):
        super().__init__()
        if vocab_size == "auto":
            raise ValueError("encoder.text: vocab_size 'auto' is set by a graph from the tokenizer wired to 'ids'; "
                             f"give a number when building the block in Python (tokenizer.bytes: {VOCAB_SIZE})")
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("width", width),
                            ("layers", layers), ("heads", heads), ("output_dim", output_dim)):
            least = 0 if name == "output_dim" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"encoder.text: {name} must be an int >= {least}, got {value!r}")
        if width % heads:
            raise ValueError(f"encoder.text: heads ({heads}) must divide width ({width})")
        if attention not in ("causal", "bidirectional", "padding"):
            raise ValueError(f"encoder.text: attention must be causal, bidirectional or padding, got {attention!r}")
        if pool not in ("argmax", "last", "first"):
            raise ValueError(f"encoder.text: pool must be argmax, last or first, got {pool!r}")
        if activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"encoder.text: activation must be quick_gelu or gelu, got {activation!r}")
        self.vocab_size, self.context_length, self.width = vocab_size, context_length, width
        self.attention, self.pool = attention, pool
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, activation) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        # No projection at all when output_dim is 0: an unused Linear would break DDP (unused parameters).
        self.text_projection = nn.Linear(width, output_dim, bias=proj_bias) if output_dim else nn.Identity()
        causal = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("causal_mask", causal, persistent=False)  # a constant, not state
        self._init_parameters(layers)

    def _init_parameters(self, layers: int) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = self.width ** -0.5
        proj_std = self.width ** -0.5 * (2 * layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for blk in self.resblocks:
            nn.init.normal_(blk.in_proj.weight, std=attn_std)
            nn.init.zeros_(blk.in_proj.bias)  # nn.MultiheadAttention zero-initialises both attention biases
            nn.init.normal_(blk.out_proj.weight, std=proj_std)
            nn.init.zeros_(blk.out_proj.bias)
            nn.init.normal_(blk.mlp[0].weight, std=fc_std)
            nn.init.normal_(blk.mlp[2].weight, std=proj_std)
        if isinstance(self.text_projection, nn.Identity):
            return
        nn.init.normal_(self.text_projection.weight, std=self.width ** -0.5)
        if self.text_projection.bias is not None:
            nn.init.zeros_(self.text_projection.bias)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> TextFeatures:
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ValueError(f"encoder.text: expected ids (B, T) with T <= context_length {self.context_length}, "
                             f"got {tuple(ids.shape)}")
        t = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:t]  # (B, T, W)
        attn_mask = None
        if self.attention == "causal":
            attn_mask = self.causal_mask[:t, :t].to(x.dtype)
        elif self.attention == "padding":
            if mask is None:
                raise ValueError("encoder.text: attention 'padding' needs the tokenizer's mask input")
            attn_mask = (mask > 0)[:, None, None, :]  # (B, 1, 1, T): keys that are real tokens
        for blk in self.resblocks:
            x = blk(x, attn_mask)
        x = self.ln_final(x)
        if self.pool == "argmax":
            picked = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # the EOT token
        elif self.pool == "last":
            picked = x[:, -1]
        else:
            picked = x[:, 0]
        return TextFeatures(self.text_projection(picked), x)
