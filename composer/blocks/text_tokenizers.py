"""Faithful caption tokenizers (data-stage blocks): CLIP's BPE, a Hugging Face ``tokenizer.json``, a
SentencePiece model. Each returns ``composer.blocks.text.Tokens(ids, mask, positive)`` like ``tokenizer.bytes``.

- ``tokenizer.clip_bpe``: CLIP's 49408-id byte-level BPE from the vocabulary file inside the ``open_clip_torch``
  wheel (nothing is downloaded); ids equal ``open_clip.get_tokenizer("ViT-B-32")`` (tested on 1200 captions).
- ``tokenizer.hf``: any local ``tokenizer.json`` (``tokenizers``), e.g. GLIP's ``bert-base-uncased``
  WordPiece (vocab 30522, ``[CLS]``/``[SEP]``, ``[PAD]`` = 0, MAX_QUERY_LEN 256).
- ``tokenizer.sentencepiece``: a local SentencePiece ``.model`` with big_vision's ``tokenize`` framing, as
  SigLIP uses it (c4_en, 32000 pieces, ``max_len`` 64, EOS sticky, padding with 1 = EOS).

Masks always come from the lengths: in CLIP's BPE id 0 is the real token ``!``, so ``ids != 0`` would be wrong.

Each block knows its vocabulary size (``vocab_size``) and whether its end token has the largest id
(``eot_is_largest``): the graph validator checks that a text encoder fed by the tokenizer has an embedding
table of that size and pools with ``argmax`` only when the end token is the largest id (CLIP's rule,
openai/CLIP · clip/model.py · encode_text).

GLIP's spans: a token is in box k's row when its character span in the original caption overlaps one of the
box's ``[start, end)`` spans, which covers microsoft/GLIP · modulated_coco.py · create_positive_map's
``char_to_token(start) .. char_to_token(end - 1)`` rule (and its retry when a span starts or ends on a space).
Tokens cut by truncation and the final end token are never marked.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from composer.blocks import clip_bpe, file_tokenizers
from composer.blocks.registry import block
from composer.blocks.text import Tokens


def _check_length(kind: str, context_length, least: int = 2) -> None:
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < least:
        raise ValueError(f"{kind}: context_length must be an int >= {least}, got {context_length!r}")


def _check_batch(kind: str, caption, spans) -> None:
    if isinstance(caption, str) or not all(isinstance(c, str) for c in caption):
        raise ValueError(f"{kind}: caption must be a list of str (one per image)")
    if spans is not None and len(spans) != len(caption):
        raise ValueError(f"{kind}: {len(spans)} span lists for {len(caption)} captions")


@lru_cache(maxsize=4)
def _clip(vocab: str | None, backend: str) -> clip_bpe.ClipTokenizer:
    """One parsed vocabulary per process (reading the 49k merges takes ~0.3 s)."""
    return clip_bpe.ClipTokenizer(vocab, backend=backend)


@block("tokenizer.clip_bpe")
class ClipBPETokenizer(nn.Module):
    """CLIP's BPE: ftfy + HTML unescape + whitespace + lower-case cleaning, ``[SOT] bpe [EOT]`` framing, zero padding.

    Over-long captions are cut to ``context_length`` with EOT forced into the last slot (75 text tokens at 77),
    as ``open_clip`` ``SimpleTokenizer.__call__``. SOT = 49406, EOT = 49407 (the largest id: argmax pooling).

    Args:
        context_length: tokens per caption T, SOT and EOT included (CLIP 77).
        vocab: path of ``bpe_simple_vocab_16e6.txt.gz``; default the copy inside the ``open_clip`` package.
        backend: ``python`` (default) or ``rust`` (Hugging Face ``tokenizers``); both give the same ids.

    Inputs:
        caption: list of B str.
        spans: optional, per caption a list per box of ``[start, end)`` character spans (GLIP).

    Output: ``Tokens(ids (B, T) int64, mask (B, T) int64, positive)``, ``positive`` B float32 (n_i, T) maps.
    """

    stage = "data"
    vocab_size = 49408
    eot_is_largest = True

    def __init__(self, *, context_length: int = 77, vocab: str | None = None, backend: str = "python"):
        super().__init__()
        _check_length("tokenizer.clip_bpe", context_length)
        if backend not in ("python", "rust"):
            raise ValueError(f"tokenizer.clip_bpe: backend must be python or rust, got {backend!r}")
        self.context_length = context_length
        self.tok = _clip(vocab, backend)

    @classmethod
    def text_vocab(cls, **params) -> tuple[int, bool]:
        """(vocab size, end token is the largest id) for the validator, without building the block."""
        return cls.vocab_size, cls.eot_is_largest

    def forward(self, caption: list[str], spans: list | None = None) -> Tokens:
        _check_batch("tokenizer.clip_bpe", caption, spans)
        t = self.context_length
        if spans is None:
            framed = self.tok.frame(self.tok.encode(list(caption)), t)
            return Tokens(framed.ids, framed.mask, [torch.zeros(0, t) for _ in caption])
        encoded = self.tok.encode_with_offsets(list(caption))
        framed = self.tok.frame([ids for ids, _ in encoded], t)
        positive = [clip_bpe.positive_map(offsets, boxes, t) for (_, offsets), boxes in zip(encoded, spans)]
        return Tokens(framed.ids, framed.mask, positive)


class _FileTokenizer(nn.Module):
    """Shared forward of the file-based tokenizers: ids, mask and offset-based positive maps."""

    stage = "data"
    kind_name = ""

    def forward(self, caption: list[str], spans: list | None = None) -> Tokens:
        _check_batch(self.kind_name, caption, spans)
        t = self.context_length
        framed = self.tok(list(caption))
        if spans is None:
            return Tokens(framed.ids, framed.mask, [torch.zeros(0, t) for _ in caption])
        encoded = self.tok.encode_with_offsets(list(caption))
        positive = [file_tokenizers.positive_map(offsets, boxes, t) for (_, offsets), boxes in zip(encoded, spans)]
        return Tokens(framed.ids, framed.mask, positive)


@lru_cache(maxsize=8)
def _hf(path: str, context_length: int, pad_id: int | None) -> file_tokenizers.HFTokenizer:
    return file_tokenizers.HFTokenizer(path, context_length, pad_id)


@block("tokenizer.hf")
class HFFileTokenizer(_FileTokenizer):
    """A local Hugging Face ``tokenizer.json``: its own normaliser, pre-tokeniser, model and special tokens.

    Truncation keeps the post-processor's specials inside ``context_length`` (BERT: ``[CLS] … [SEP]``);
    padding uses the file's ``[PAD]`` / ``<pad>`` id (or ``pad_id``). Offsets come from the library's
    ``Encoding.offsets`` (character spans of the input). GLIP: bert-base-uncased, context 256.

    Args:
        path: the ``tokenizer.json`` file (a missing file is one error line).
        context_length: tokens per caption T, specials included (GLIP MAX_QUERY_LEN 256).
        pad_id: padding id; default the file's pad token, else 0.

    Inputs:
        caption: list of B str.
        spans: optional, per caption a list per box of ``[start, end)`` character spans.

    Output: ``Tokens(ids (B, T) int64, mask (B, T) int64, positive)``.
    """

    kind_name = "tokenizer.hf"
    eot_is_largest = False  # [SEP] is no larger than the word pieces: pool 'first' ([CLS]) or use the tokens

    def __init__(self, *, path: str, context_length: int = 256, pad_id: int | None = None):
        super().__init__()
        _check_length("tokenizer.hf", context_length, least=1)
        self.context_length = context_length
        self.tok = _hf(str(path), context_length, pad_id)
        self.vocab_size = self.tok.tok.get_vocab_size()

    @classmethod
    def text_vocab(cls, *, path: str, context_length: int = 256, pad_id: int | None = None) -> tuple[int, bool]:
        return _hf(str(path), context_length, pad_id).tok.get_vocab_size(), cls.eot_is_largest


@lru_cache(maxsize=8)
def _sp(path: str, context_length: int, eos: str, pad_id: int | None, lower: bool):
    return file_tokenizers.SentencePieceTokenizer(path, context_length, eos, pad_id, lower)


@block("tokenizer.sentencepiece")
class SentencePieceFileTokenizer(_FileTokenizer):
    """A local SentencePiece model with big_vision's ``tokenize`` op framing (SigLIP).

    No BOS; ``eos``: ``none``, ``yes`` (appended, cut off by truncation) or ``sticky`` (every row ends with
    EOS); padding with ``pad_id`` (SigLIP pads with 1, its EOS, so position T-1 is always EOS and the text
    tower pools there: ``pool: last``). Offsets: the pieces' UTF-8 byte spans, turned into characters.

    Args:
        path: the ``.model`` file (a missing file is one error line).
        context_length: tokens per caption T (SigLIP B/16 64; So400m/14 at 224 px 16).
        eos: none, yes or sticky (big_vision ``tokenize`` ``eos``; SigLIP sticky).
        pad_id: padding id; default the model's pad piece (or 0 when it has none). SigLIP: 1.
        lower: lower-case the caption first (big_vision ``tokenize`` default True).

    Inputs:
        caption: list of B str.
        spans: optional, per caption a list per box of ``[start, end)`` character spans.

    Output: ``Tokens(ids (B, T) int64, mask (B, T) int64, positive)``.
    """

    kind_name = "tokenizer.sentencepiece"
    eot_is_largest = False

    def __init__(self, *, path: str, context_length: int = 64, eos: str = "sticky", pad_id: int | None = None,
                 lower: bool = True):
        super().__init__()
        _check_length("tokenizer.sentencepiece", context_length, least=1)
        if eos not in ("none", "yes", "sticky"):
            raise ValueError(f"tokenizer.sentencepiece: eos must be none, yes or sticky, got {eos!r}")
        self.context_length = context_length
        self.tok = _sp(str(path), context_length, eos, pad_id, bool(lower))
        self.vocab_size = self.tok.sp.get_piece_size()

    @classmethod
    def text_vocab(cls, *, path: str, context_length: int = 64, eos: str = "sticky", pad_id: int | None = None,
                   lower: bool = True) -> tuple[int, bool]:
        return _sp(str(path), context_length, eos, pad_id, bool(lower)).sp.get_piece_size(), cls.eot_is_largest
