"""The byte tokenizer (CLIP framing, GLIP positive maps) and the CLIP text transformer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from composer.blocks.text import EOT, SOT, VOCAB_SIZE, ByteTokenizer, encode, span_to_tokens
from composer.blocks.text_encoder import TextTransformer as _Encoder


def TextTransformer(**kw) -> _Encoder:  # noqa: N802 - the block outside a graph: the byte tokenizer's vocabulary
    return _Encoder(**{"vocab_size": VOCAB_SIZE, **kw})


# ------------------------------------------------------------------ tokenizer
def test_framing_padding_and_mask():
    tok = ByteTokenizer(context_length=8)
    out = tok(["ab", ""])
    assert out.ids.tolist() == [[SOT, 97, 98, EOT, 0, 0, 0, 0], [SOT, EOT, 0, 0, 0, 0, 0, 0]]
    assert out.mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert out.ids.dtype == torch.long and out.positive[0].shape == (0, 8)


def test_truncation_keeps_eot_last_like_clip_tokenize():
    ids = encode("abcdefgh", 5)  # clip.tokenize(truncate=True): tokens[:n], tokens[-1] = eot
    assert ids == [SOT, 97, 98, 99, EOT]
    out = ByteTokenizer(context_length=5)(["abcdefgh"])
    assert int(out.ids.argmax(-1)) == 4  # EOT is the largest id: CLIP's argmax pooling finds it


def test_utf8_bytes_and_span_offsets():
    caption = "é red star"  # é is two bytes: every later character shifts by one token
    assert encode(caption, 32)[:4] == [SOT, 0xC3, 0xA9, 32]
    positions = span_to_tokens(caption, 2, 10, 32)  # "red star"
    ids = encode(caption, 32)
    assert bytes(ids[p] for p in positions).decode() == "red star"


def test_positive_map_marks_each_phrase():
    caption = "a red star and a small blue ring on a striped background"
    spans = [[[2, 10]], [[17, 32]]]
    out = ByteTokenizer(context_length=64)([caption], [spans])
    pmap = out.positive[0]
    assert pmap.shape == (2, 64)
    for row, ((s, e),) in zip(pmap, spans):
        picked = [int(out.ids[0, p]) for p in row.nonzero().flatten()]
        assert bytes(picked).decode() == caption[s:e]


def test_positive_map_drops_truncated_tokens():
    caption = "a red star and a small blue ring"
    pmap = ByteTokenizer(context_length=12)([caption], [[[[2, 10]], [[17, 32]]]]).positive[0]
    assert pmap[0].nonzero().flatten().tolist() == list(range(3, 11))  # "red star" minus its last byte: 11 is EOT
    assert pmap[1].sum() == 0  # entirely cut off
    assert pmap[:, -1].sum() == 0  # the EOT slot is never a phrase token


def test_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="tokenizer.bytes"):
        ByteTokenizer(context_length=1)
    with pytest.raises(ValueError, match="list of str"):
        ByteTokenizer()("one caption")
    with pytest.raises(ValueError, match="outside"):
        ByteTokenizer()(["abc"], [[[[1, 9]]]])


# ------------------------------------------------------------------ text transformer
def _reference_encode_text(enc: TextTransformer, ids: torch.Tensor) -> torch.Tensor:
    """openai/CLIP clip/model.py · encode_text, written with nn.MultiheadAttention and the same weights."""
    x = enc.token_embedding(ids) + enc.positional_embedding[:ids.shape[1]]
    mask = torch.full((ids.shape[1],) * 2, float("-inf")).triu_(1)
    x = x.permute(1, 0, 2)  # NLD -> LND
    for blk in enc.resblocks:
        w = enc.width
        mha = torch.nn.MultiheadAttention(w, blk.heads)
        mha.in_proj_weight.data.copy_(blk.in_proj.weight)
        mha.in_proj_bias.data.copy_(blk.in_proj.bias)
        mha.out_proj.weight.data.copy_(blk.out_proj.weight)
        mha.out_proj.bias.data.copy_(blk.out_proj.bias)
        h = blk.ln_1(x)
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        fc, proj = blk.mlp[0], blk.mlp[2]
        h = fc(blk.ln_2(x))
        x = x + proj(h * torch.sigmoid(1.702 * h))  # QuickGELU
    x = enc.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ enc.text_projection.weight.T


def test_matches_clip_encode_text():
    torch.manual_seed(0)
    enc = TextTransformer(context_length=12, width=32, layers=2, heads=4, output_dim=16)
    for blk in enc.resblocks:  # non-zero biases so they are checked too
        torch.nn.init.normal_(blk.in_proj.bias, std=0.1)
        torch.nn.init.normal_(blk.out_proj.bias, std=0.1)
    ids = ByteTokenizer(context_length=12)(["a red star", "a blue ring and more"]).ids
    out = enc(ids)
    assert out.pooled.shape == (2, 16) and out.tokens.shape == (2, 12, 32)
    torch.testing.assert_close(out.pooled, _reference_encode_text(enc, ids), atol=1e-5, rtol=1e-5)


def test_causal_mask_hides_later_tokens():
    torch.manual_seed(0)
    enc = TextTransformer(context_length=10, width=16, layers=1, heads=2, output_dim=8)
    a = torch.tensor([[SOT, 97, 98, EOT, 0, 0, 0, 0, 0, 0]])
    b = a.clone()
    b[0, 5:] = 120  # change only positions after EOT
    ta, tb = enc(a).tokens, enc(b).tokens
    torch.testing.assert_close(ta[:, :5], tb[:, :5])
    bi = TextTransformer(context_length=10, width=16, layers=1, heads=2, output_dim=8, attention="bidirectional")
    assert not torch.allclose(bi(a).tokens[:, :5], bi(b).tokens[:, :5])


def test_padding_attention_ignores_padding_and_pools():
    torch.manual_seed(0)
    enc = TextTransformer(context_length=8, width=16, layers=2, heads=2, output_dim=0, attention="padding",
                          pool="first", activation="gelu")
    short = ByteTokenizer(context_length=8)(["ab"])
    ids2 = short.ids.clone()
    ids2[0, 5:] = 7  # garbage on padded positions, still masked
    out1, out2 = enc(short.ids, short.mask), enc(ids2, short.mask)
    torch.testing.assert_close(out1.tokens[:, :4], out2.tokens[:, :4])
    assert out1.pooled.shape == (1, 16)  # output_dim 0: no projection
    torch.testing.assert_close(out1.pooled, out1.tokens[:, 0])
    with pytest.raises(ValueError, match="mask"):
        enc(short.ids)


def test_last_pooling_and_projection_bias():
    enc = TextTransformer(context_length=6, width=8, layers=1, heads=2, output_dim=4, attention="bidirectional",
                          pool="last", proj_bias=True)
    ids = torch.tensor([[SOT, 97, EOT, 0, 0, 0]])
    out = enc(ids)
    torch.testing.assert_close(out.pooled, enc.text_projection(out.tokens[:, -1]))
    assert torch.count_nonzero(enc.text_projection.bias) == 0


def test_initialisation_follows_clip():
    torch.manual_seed(0)
    w, layers = 256, 4
    enc = TextTransformer(context_length=77, width=w, layers=layers, heads=4, output_dim=128)
    blk = enc.resblocks[0]
    stds = {"token": (enc.token_embedding.weight, 0.02), "pos": (enc.positional_embedding, 0.01),
            "in_proj": (blk.in_proj.weight, w ** -0.5), "out_proj": (blk.out_proj.weight, w ** -0.5 * (2 * layers) ** -0.5),
            "fc": (blk.mlp[0].weight, (2 * w) ** -0.5), "c_proj": (blk.mlp[2].weight, w ** -0.5 * (2 * layers) ** -0.5),
            "text_projection": (enc.text_projection.weight, w ** -0.5)}
    for name, (p, std) in stds.items():
        assert math.isclose(float(p.detach().std()), std, rel_tol=0.1), name
    assert torch.count_nonzero(blk.in_proj.bias) == 0


def test_gradients_reach_every_parameter():
    enc = TextTransformer(context_length=8, width=16, layers=2, heads=2, output_dim=8)
    ids = ByteTokenizer(context_length=8)(["abc", "defgh"]).ids
    F.normalize(enc(ids).pooled, dim=-1).sum().backward()
    unused = [n for n, p in enc.named_parameters() if p.grad is None]
    # rows of the embedding for bytes never seen get zero gradient but a gradient tensor all the same
    assert unused == []


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="encoder.text: heads"):
        TextTransformer(width=10, heads=3)
    with pytest.raises(ValueError, match="encoder.text"):
        TextTransformer(layers=0)
    with pytest.raises(ValueError, match="encoder.text"):
        TextTransformer(pool="mean")
    with pytest.raises(ValueError, match="vocab_size 'auto' is set by a graph"):
        _Encoder()  # 'auto' is resolved from the wired tokenizer when a graph is loaded
    with pytest.raises(ValueError, match="context_length"):
        TextTransformer(context_length=4, width=8, heads=2, layers=1)(torch.zeros(1, 5, dtype=torch.long))
