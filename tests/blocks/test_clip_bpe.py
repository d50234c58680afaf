"""tokenizer.clip_bpe against open_clip's SimpleTokenizer (the reference, used only here)."""
from __future__ import annotations

import html

import ftfy
import pytest
import torch

from composer.blocks import clip_bpe
from composer.blocks.registry import get
from text_helpers import make_captions

CAPTIONS = make_captions(1200, seed=0)


@pytest.fixture(scope="module")
def reference():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.mark.parametrize("backend", ["rust", "python"])
def test_clip_equals_open_clip(reference, backend):
    tok = clip_bpe.ClipTokenizer(backend=backend)
    assert torch.equal(tok(CAPTIONS), reference(CAPTIONS))
    assert torch.equal(tok(CAPTIONS[:50], context_length=16), reference(CAPTIONS[:50], context_length=16))


def test_clip_facts(reference):
    assert (reference.sot_token_id, reference.eot_token_id, reference.vocab_size) == (49406, 49407, 49408)
    ids = clip_bpe.ClipTokenizer()(CAPTIONS)
    long = ids[:, -1] != 0  # over-long rows: EOT forced into the last slot
    assert long.sum() >= 20 and (ids[long, -1] == clip_bpe.EOT).all()
    assert ids.max() == clip_bpe.EOT and (ids.argmax(-1) == (ids == clip_bpe.EOT).int().argmax(-1)).all()


def test_clip_id_zero_is_a_real_token():
    # '!' opening an unmerged punctuation run is id 0, the pad value: the mask must come from lengths
    tokens, _ = clip_bpe.ClipTokenizer().tokenize(["a !~ b"])
    row = tokens.ids[0, :tokens.mask[0].sum()]
    assert 0 in row.tolist() and row[-1] == clip_bpe.EOT


@pytest.mark.parametrize("backend", ["rust", "python"])
def test_clip_offsets_point_at_source(backend):
    tok = clip_bpe.ClipTokenizer(backend=backend)
    checked = 0
    for caption, (ids, offs) in zip(CAPTIONS, tok.encode_with_offsets(CAPTIONS)):
        assert all(0 <= s <= e <= len(caption) for s, e in offs)
        assert all(a[0] <= b[0] for a, b in zip(offs, offs[1:]))  # monotone
        if ftfy.fix_text(caption) != caption:
            continue  # ftfy stretches are diff-aligned: only monotonicity is promised
        for i, (s, e) in zip(ids, offs):
            text = tok_text(i)
            if text is not None:  # whole characters: the token's text is in its (cleaned) source stretch
                assert text in html.unescape(html.unescape(caption[s:e])).lower(), (caption, text, caption[s:e])
                checked += 1
    assert checked > 5000


def tok_text(i: int) -> str | None:
    table = {v: k for k, v in clip_bpe.bytes_to_unicode().items()}
    symbol = VOCAB_INV.get(i, "")
    if symbol in clip_bpe.SPECIALS:
        return symbol
    try:
        return bytes(table[c] for c in symbol.replace(clip_bpe.END_OF_WORD, "")).decode("utf-8")
    except (UnicodeDecodeError, KeyError):
        return None


VOCAB_INV = {i: t for t, i in clip_bpe.load_vocab()[0].items()}


def at(caption: str, phrase: str) -> tuple[int, int]:
    start = caption.index(phrase)
    return start, start + len(phrase)


def test_clip_glip_spans():
    tok = clip_bpe.ClipTokenizer()
    caption = "Two DOGS &amp; a   café-cat on a sofa"
    boxes = [[at(caption, "DOGS")], [at(caption, "café-cat")], [at(caption, "Two"), at(caption, "sofa")]]
    assert [caption[s:e] for b in boxes for s, e in b] == ["DOGS", "café-cat", "Two", "sofa"]
    tokens, (pos,) = tok.tokenize([caption], [boxes])
    words = [VOCAB_INV[int(i)] for i in tokens.ids[0]]
    picked = [[words[j] for j in row.nonzero().flatten().tolist()] for row in pos]
    assert picked == [["dogs</w>"], ["cafÃ©</w>", "-</w>", "cat</w>"], ["two</w>", "sofa</w>"]]


def test_clip_spans_cut_by_truncation():
    tok = clip_bpe.ClipTokenizer(context_length=6)
    caption = "a b c d e f g"
    _, (pos,) = tok.tokenize([caption], [[[(0, 1)], [(6, 7)], [(12, 13)]]])
    assert pos[0].nonzero().flatten().tolist() == [1]
    assert pos[1].nonzero().flatten().tolist() == [4]  # 'd' is the last kept text token
    assert pos[2].sum() == 0  # cut off




def test_block_ids_mask_and_spans(reference):
    block = get("tokenizer.clip_bpe").cls(context_length=77)
    captions = CAPTIONS[:200]
    out = block(captions)
    assert torch.equal(out.ids, reference(captions))
    lengths = torch.tensor([min(len(reference.encode(c)) + 2, 77) for c in captions])  # SOT + BPE + EOT, cut
    assert torch.equal(out.mask.sum(-1), lengths) and len(out.positive) == 200
    caption = "a !~ dog"
    out = block([caption], [[[at(caption, "dog")]]])
    assert out.ids[0, 2] == 0 and out.mask[0, :5].tolist() == [1] * 5  # '!' is id 0 and still a real token
    assert out.positive[0][0].nonzero().flatten().tolist() == [4]
