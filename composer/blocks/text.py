"""Text tokenisation that needs no download: UTF-8 bytes with CLIP's start / end-of-text framing.

CLIP's tokenizer (openai/CLIP · clip/clip.py · tokenize) frames each caption as ``[SOT] tokens [EOT]``, zero-pads
to ``context_length`` (77) and, with ``truncate=True``, cuts to ``context_length`` and puts EOT in the last slot.
The text encoder pools at the EOT position, found as the argmax of the ids because EOT has the largest id
(``x[arange(B), text.argmax(-1)]``, clip/model.py · encode_text). A byte vocabulary keeps all of that: ids
0-255 are the caption's UTF-8 bytes, 256 is SOT and 257 EOT (the largest), and padding is 0 as in CLIP.

GLIP (microsoft/GLIP · data/datasets/modulated_coco.py · create_positive_map) turns each box's character spans
``[start, end)`` into a row over token positions with the tokenizer's ``char_to_token``: the tokens from the one
holding ``start`` to the one holding ``end - 1``, inclusive. With bytes, character c of the caption starts at
byte ``len(caption[:c].encode())`` and sits at token position ``1 +`` that (after SOT).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from composer.blocks.registry import block

BYTES = 256
SOT = 256  # start of text
EOT = 257  # end of text: the largest id, so argmax(ids) finds it (CLIP's pooling rule)
VOCAB_SIZE = 258
PAD = 0  # clip.tokenize zero-fills


class Tokens(NamedTuple):
    """A tokenised caption batch."""

    ids: Tensor  # (B, T) int64: SOT, bytes, EOT, zeros
    mask: Tensor  # (B, T) int64: 1 on SOT, bytes and EOT, 0 on padding
    positive: list  # B float32 tensors (n_i, T): row k marks the tokens of box k's phrase (empty without spans)


def encode(caption: str, context_length: int) -> list[int]:
    """``[SOT] bytes [EOT]`` cut to ``context_length`` with EOT kept in the last slot (clip.tokenize truncate)."""
    ids = [SOT, *caption.encode("utf-8"), EOT]
    if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = EOT
    return ids


def span_to_tokens(caption: str, start: int, end: int, context_length: int) -> range:
    """Token positions covering characters ``[start, end)`` of ``caption``, clipped to the real tokens.

    Positions past the truncation point (and the final EOT slot) are dropped, as GLIP drops spans whose
    ``char_to_token`` is None; an empty range means the phrase was cut off.
    """
    if not 0 <= start < end <= len(caption):
        raise ValueError(f"tokenizer.bytes: span [{start}, {end}) lies outside a caption of {len(caption)} characters")
    first = 1 + len(caption[:start].encode("utf-8"))
    stop = 1 + len(caption[:end].encode("utf-8"))  # one past the last byte of character end - 1
    last_real = min(len(caption.encode("utf-8")) + 1, context_length - 1)  # EOT's slot is not a phrase token
    return range(first, min(stop, last_real))


@block("tokenizer.bytes")
class ByteTokenizer(nn.Module):
    """UTF-8 byte tokenizer with CLIP's SOT / EOT framing, zero padding and truncation; no vocabulary file.

    Runs in the data stage (DataLoader workers). Gives the token ids, the attention mask and, when the boxes'
    phrase spans are given (GLIP), each box's positive map over token positions (binary, as GLIP's collator
    binarises it).

    Args:
        context_length: tokens per caption T, SOT and EOT included (CLIP 77, clip.py · tokenize; GLIP
            MAX_QUERY_LEN 256; SigLIP 64, open_clip ViT-B-16-SigLIP.json). Captions are cut to fit, EOT last.

    Inputs:
        caption: list of B str.
        spans: optional, per caption a list per box of [start, end) character spans (the raw batch's
            ``tokens_positive``, MDETR convention).

    Output: ``Tokens(ids (B, T) int64, mask (B, T) int64, positive)`` with ``positive`` a list of B float32
    (n_i, T) tensors ((0, T) when ``spans`` is not given).
    """

    stage = "data"
    vocab_size = VOCAB_SIZE
    eot_is_largest = True

    @classmethod
    def text_vocab(cls, **params) -> tuple[int, bool]:
        """(vocab size, end token is the largest id) for the graph validator."""
        return cls.vocab_size, cls.eot_is_largest

    def __init__(self, *, context_length: int = 77):
        super().__init__()
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"tokenizer.bytes: context_length must be an int >= 2 (room for SOT and EOT), "
                             f"got {context_length!r}")
        self.context_length = context_length

    def forward(self, caption: list[str], spans: list | None = None) -> Tokens:
        if isinstance(caption, str) or not all(isinstance(c, str) for c in caption):
            raise ValueError("tokenizer.bytes: caption must be a list of str (one per image)")
        if spans is not None and len(spans) != len(caption):
            raise ValueError(f"tokenizer.bytes: {len(spans)} span lists for {len(caption)} captions")
        t = self.context_length
        ids = torch.zeros(len(caption), t, dtype=torch.long)
        for i, text in enumerate(caption):
            row = encode(text, t)
            ids[i, :len(row)] = torch.tensor(row)
        mask = (ids != PAD).long()  # right for bytes (no real token is 0); BPE tokenizers use lengths
        positive = [self.positive_map(text, boxes) for text, boxes in zip(caption, spans)] if spans is not None \
            else [torch.zeros(0, t) for _ in caption]
        return Tokens(ids, mask, positive)

    def positive_map(self, caption: str, boxes: list) -> Tensor:
        """(n, T) float32: row k is 1 on the tokens of every span of box k (GLIP create_positive_map, binary)."""
        out = torch.zeros(len(boxes), self.context_length)
        for k, box_spans in enumerate(boxes):
            for start, end in box_spans:
                positions = span_to_tokens(caption, int(start), int(end), self.context_length)
                out[k, positions.start:positions.stop] = 1.0
        return out
