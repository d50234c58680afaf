"""Tokenizers read from local files: a Hugging Face ``tokenizer.json`` or a SentencePiece ``.model``.

Both give ``(ids, mask)`` of shape (B, T), and per-token character spans of the input text so that grounding
spans (GLIP's ``tokens_positive``, character ``[start, end)``) can be mapped to token positions.

- ``HFTokenizer``: the file's own normaliser, pre-tokeniser, model and post-processor (e.g. BERT's
  ``[CLS] ... [SEP]``). Truncation is the library's (``enable_truncation``), which keeps the post-processor's
  special tokens inside the limit; padding uses the file's pad token (``[PAD]`` / ``<pad>``) or 0.
- ``SentencePieceTokenizer``: big_vision's ``tokenize`` op semantics (SigLIP): optional lower-casing,
  no BOS, EOS ``"none" | "yes" | "sticky"`` (sticky: an over-long row ends with EOS), pad value configurable
  (SigLIP pads with 1, the EOS id of its c4_en model, so the last position is always EOS).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from composer.blocks.clip_bpe import Framed, VocabNotFound, needs

Span = tuple[int, int]


def _require(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VocabNotFound(path)
    return path


def _pad(rows: Sequence[Sequence[int]], t: int, pad_id: int) -> Framed:
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row, dtype=torch.long), 1
    return Framed(ids, mask)


def span_positions(offsets: Sequence[Span | None], spans: Sequence[Span]) -> list[int]:
    """Token positions whose character span overlaps any of ``spans`` (``None`` offsets = special tokens).

    Overlap covers GLIP's rule (char_to_token of start and end-1, and everything between) and also spans that
    start or end on a space, which GLIP patches by retrying neighbouring characters.
    """
    return [j for j, off in enumerate(offsets)
            if off is not None and off[1] > off[0] and any(off[0] < e and off[1] > s for s, e in spans)]


def positive_map(offsets: Sequence[Span | None], boxes: Sequence[Sequence[Span]], context_length: int) -> Tensor:
    """(n_boxes, T) float map: row k is 1 on the tokens of box k's spans."""
    out = torch.zeros(len(boxes), context_length)
    for k, spans in enumerate(boxes):
        out[k, span_positions(offsets, spans)] = 1.0
    return out


class HFTokenizer:
    """A Hugging Face ``tokenizers`` file, padded / truncated to ``context_length``."""

    def __init__(self, path: str | os.PathLike, context_length: int, pad_id: int | None = None):
        Tokenizer = needs("tokenizers", "tokenizers").Tokenizer
        self.path = _require(path)
        self.tok = Tokenizer.from_file(str(self.path))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=context_length)
        self.context_length = context_length
        self.pad_id = pad_id if pad_id is not None else self._file_pad_id()

    def _file_pad_id(self) -> int:
        for name in ("[PAD]", "<pad>", "<|padding|>"):
            if (i := self.tok.token_to_id(name)) is not None:
                return i
        return 0

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[Span | None]]]:
        """Per text: truncated ids (specials included) and char spans (``None`` on special tokens)."""
        return [(e.ids, [None if special else off for off, special in zip(e.offsets, e.special_tokens_mask)])
                for e in self.tok.encode_batch(texts)]

    def __call__(self, texts: str | list[str]) -> Framed:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _pad([e.ids for e in self.tok.encode_batch(texts)], self.context_length, self.pad_id)


class SentencePieceTokenizer:
    """A SentencePiece model with big_vision's ``tokenize`` framing (no BOS; EOS none / yes / sticky)."""

    def __init__(self, path: str | os.PathLike, context_length: int, eos: str = "sticky",
                 pad_id: int | None = None, lower: bool = True):
        spm = needs("sentencepiece", "sentencepiece")
        if eos not in ("none", "yes", "sticky"):
            raise ValueError(f"sentencepiece tokenizer: eos must be 'none', 'yes' or 'sticky', got {eos!r}")
        self.path = _require(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.context_length, self.eos, self.lower = context_length, eos, lower
        self.pad_id = pad_id if pad_id is not None else max(self.sp.pad_id(), 0)  # -1 means "no pad piece"

    def _frame(self, row: list[int]) -> list[int]:
        t, eos_id = self.context_length, self.sp.eos_id()
        if self.eos == "none":
            return row[:t]
        if self.eos == "yes":  # generative use: a cut row has no EOS
            return (row + [eos_id])[:t]
        return row[:t - 1] + [eos_id]  # sticky: every row ends with EOS

    def _text(self, text: str) -> str:
        """Lower-cased when asked; a char whose lower case is longer ('İ') is kept, so offsets stay exact."""
        if not self.lower:
            return text
        low = text.lower()
        return low if len(low) == len(text) else "".join(c.lower() if len(c.lower()) == 1 else c for c in text)

    def __call__(self, texts: str | list[str]) -> Framed:
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = self.sp.encode([self._text(t) for t in texts])
        return _pad([self._frame(r) for r in rows], self.context_length, self.pad_id)

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[Span | None]]]:
        """Per text: framed ids and char spans (``None`` on EOS). SentencePiece reports UTF-8 byte offsets into
        its input; they are turned into character offsets here."""
        out = []
        for text in texts:
            text = self._text(text)
            char_at = [i for i, c in enumerate(text) for _ in range(len(c.encode("utf-8")))] + [len(text)]
            proto = self.sp.encode(text, out_type="proto")
            ids = [p.id for p in proto.pieces]
            offs = [(char_at[p.begin], char_at[p.end]) for p in proto.pieces]  # end byte -> next char index
            framed = self._frame(ids)
            offs = (offs + [None])[:len(framed)]  # EOS (when present) has no span; truncation drops the tail
            if self.eos == "sticky" and len(ids) + 1 > self.context_length:
                offs[-1] = None  # the EOS that replaced the last kept piece
            out.append((framed, offs))
        return out
