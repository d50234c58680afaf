"""CLIP's byte-level BPE tokenizer (openai/CLIP · clip/simple_tokenizer.py · SimpleTokenizer, as
mlfoundations/open_clip ships it in src/open_clip/tokenizer.py with its vocabulary file inside the wheel).

Behaviour reproduced exactly (checked against ``open_clip.get_tokenizer('ViT-B-32')`` in the tests):

- cleaning: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse whitespace runs to one space, lower-case;
- pre-tokenisation: the regex below (special tokens first, contractions, letter runs, single digits, runs of
  other non-space characters), IGNORECASE; each piece is UTF-8 encoded and mapped byte -> printable char;
- BPE over those chars with ``</w>`` on a word's last symbol, merges = lines 1..48894 of the vocab file;
- ids: 256 byte chars, 256 byte chars + ``</w>``, 48894 merges, then SOT 49406 and EOT 49407 (the largest id,
  which CLIP's text encoder relies on: it pools at ``ids.argmax(-1)``);
- framing ``[SOT] tokens [EOT]``; over-long rows are cut to ``context_length`` and the last slot overwritten
  with EOT (so 75 text tokens survive at 77); zero padding. Id 0 is the real token ``!``, so the attention mask
  must come from the lengths, never from ``ids != 0``.

Quirk kept for equality: the literal strings ``<start_of_text>`` / ``<end_of_text>`` in a caption are matched as
the special tokens (open_clip puts them in its regex), so such a caption has an EOT in the middle and argmax
pooling picks that one.

Offsets: every token carries the ``[start, end)`` character span of the *original* caption it came from.
Cleaning is tracked step by step: html unescaping, whitespace collapsing and lower-casing exactly (each output
char knows its source chars); ``ftfy.fix_text`` is a black box, aligned by a diff when it changed anything, so a
rewritten stretch (mojibake, ligatures, NFC) maps to the whole source stretch it replaced.

Two interchangeable backends (same ids, tested): ``"python"``, the plain cached BPE (default: as fast end to
end, see ClipTokenizer), and ``"rust"``, a Hugging Face ``tokenizers`` BPE built from the same vocab.
"""
from __future__ import annotations

import difflib
import gzip
import html
import importlib
import importlib.resources
import os
import re as std_re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # vocab 49408 = 512 byte symbols + merges + SOT + EOT
SOT, EOT = 49406, 49407
SPECIALS = ("<start_of_text>", "<end_of_text>")
CONTEXT_LENGTH = 77
END_OF_WORD = "</w>"
PATTERN = "|".join(SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

Span = tuple[int, int]


class VocabNotFound(ValueError):
    """A tokenizer file (or the package holding it) is missing; ``str`` is one line naming the path.

    A ValueError so that the graph compiler reports it as one line at the block's YAML location."""

    def __init__(self, path, hint: str = ""):
        super().__init__(f"tokenizer file not found: {path}{hint}")
        self.path = path

    def __str__(self) -> str:
        return self.args[0]


def needs(module: str, package: str):
    """Import an optional dependency of the text tokenizers, or fail with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise VocabNotFound(f"(python module {module!r})", f"; pip install {package} "
                            f"(or pip install 'pretext-composer[text]')") from None


class Framed(NamedTuple):
    ids: Tensor  # (B, T) int64
    mask: Tensor  # (B, T) int64, 1 on SOT..EOT


def default_vocab_path() -> Path:
    """The vocab file inside the installed ``open_clip`` package (no download)."""
    try:
        path = importlib.resources.files("open_clip") / VOCAB_FILE
    except ModuleNotFoundError:
        raise VocabNotFound(VOCAB_FILE, " (pip install open_clip_torch, or pass vocab_path)") from None
    return Path(str(path))


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable char: printable Latin-1 bytes map to themselves, the rest to chr(256 + n) in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]
    # insertion order = id order: the kept bytes first, then the remapped ones
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def load_vocab(path: str | os.PathLike | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) from the gzipped merges file; ids in CLIP's order (see module docstring)."""
    path = Path(path) if path is not None else default_vocab_path()
    if not path.is_file():
        raise VocabNotFound(path)
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1:N_MERGES + 1]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + list(SPECIALS)
    return {t: i for i, t in enumerate(tokens)}, merges


# ---------------------------------------------------------------- cleaning with offsets
# Each step maps (text, spans) -> (text', spans'), spans[i] = source span in the original caption of char i.

def _identity(text: str) -> list[Span]:
    return [(i, i + 1) for i in range(len(text))]


def _merge(spans: Sequence[Span]) -> Span:
    return (spans[0][0], spans[-1][1])


def _align_chars(old: str, spans: list[Span], new: str) -> list[Span]:
    """Character-level diff of two short strings (difflib is quadratic: keep the inputs small)."""
    out: list[Span] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            out += spans[i1:i2]
        elif tag != "delete":
            at = spans[i1 - 1][1] if i1 else (spans[0][0] if spans else 0)
            out += [_merge(spans[i1:i2]) if i2 > i1 else (at, at)] * (j2 - j1)
    return out


_CHUNKS = std_re.compile(r"\s+|\S+")


def _align(old: str, spans: list[Span], new: str) -> list[Span]:
    """Spans for ``new``, an opaque rewrite of ``old`` (ftfy): unchanged chars keep theirs, a rewritten stretch
    shares the span of the stretch it replaced (an insertion gets an empty span). Diffed word by word first,
    then character by character inside the changed words, which keeps long captions fast."""
    if old == new:
        return spans
    a, b = _CHUNKS.findall(old), _CHUNKS.findall(new)
    starts = [0]
    for chunk in a:
        starts.append(starts[-1] + len(chunk))
    out: list[Span] = []
    # autojunk: frequent chunks (single spaces, "a") are not used as anchors, which keeps long captions fast;
    # the opcodes remain a valid edit script, only possibly less tight.
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        o1, o2 = starts[i1], starts[i2]
        if tag == "equal":
            out += spans[o1:o2]
        elif tag != "delete":
            out += _align_chars(old[o1:o2], spans[o1:o2], "".join(b[j1:j2])) if o2 > o1 else \
                [(spans[o1 - 1][1],) * 2 if o1 else (0, 0)] * len("".join(b[j1:j2]))
    return out


# the character-reference pattern html.unescape applies (CPython Lib/html/__init__.py); checked at run time
_CHARREF = std_re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def _unescape(text: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """``html.unescape`` with offsets: an entity's replacement chars all map to the entity's span."""
    parts, out, last = [], [], 0
    for m in _CHARREF.finditer(text):
        parts.append(text[last:m.start()]), out.extend(spans[last:m.start()])
        rep = html.unescape(m.group(0))  # the stdlib replacement depends on the match alone
        parts.append(rep), out.extend([_merge(spans[m.start():m.end()])] * len(rep))
        last = m.end()
    parts.append(text[last:]), out.extend(spans[last:])
    new = "".join(parts)
    if new != html.unescape(text):  # a future stdlib change: stay exact on text, approximate on offsets
        return html.unescape(text), _align(text, spans, html.unescape(text))
    return new, out


def _collapse_whitespace(text: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """``" ".join(text.split())`` (which also strips); a run of whitespace becomes one space with its span."""
    chars, out, run = [], [], []
    for ch, span in zip(text, spans):
        if ch.isspace():  # str.split()'s definition of whitespace
            run.append(span)
            continue
        if run and chars:
            chars.append(" "), out.append(_merge(run))
        run = []
        chars.append(ch), out.append(span)
    return "".join(chars), out


def _lower(text: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """``str.lower`` with offsets; per-char lengths from ``c.lower()`` ('İ' -> 2 chars), text from the whole
    string (final sigma depends on context but not on length)."""
    new = text.lower()
    if len(new) == len(text):
        return new, spans
    out = [s for ch, s in zip(text, spans) for _ in range(len(ch.lower()))]
    return new, out


def clean(text: str) -> str:
    """open_clip's ``_clean_lower`` (the ViT-B-32 tokenizer's cleaning)."""
    text = html.unescape(html.unescape(needs("ftfy", "ftfy").fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def clean_with_offsets(text: str) -> tuple[str, list[Span]]:
    """``clean(text)`` and, for each of its chars, the span of ``text`` it comes from."""
    fixed = needs("ftfy", "ftfy").fix_text(text)
    spans = _align(text, _identity(text), fixed)
    cur, spans = _unescape(*_unescape(fixed, spans))
    cur, spans = _lower(*_collapse_whitespace(cur, spans))
    return cur, spans


# ---------------------------------------------------------------- BPE backends

class _PythonBPE:
    """Greedy BPE: repeatedly merge every occurrence of the adjacent pair with the lowest merge rank."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab, self.ranks = vocab, {m: r for r, m in enumerate(merges)}
        regex = needs("regex", "regex")
        self.pattern = regex.compile(PATTERN, regex.IGNORECASE)
        self.byte_char = bytes_to_unicode()
        self.cache: dict[str, tuple[str, ...]] = {s: (s,) for s in SPECIALS}

    def word(self, chars: str) -> tuple[str, ...]:
        """Subword symbols of one pre-token (already byte-mapped); the last carries ``</w>``."""
        if chars in self.cache:
            return self.cache[chars]
        symbols = [*chars[:-1], chars[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, N_MERGES))
            if pair not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[chars] = tuple(symbols)
        return self.cache[chars]

    def ids(self, cleaned: str) -> list[int]:
        """Ids only (the hot path: no offset bookkeeping)."""
        out = []
        for piece in self.pattern.findall(cleaned):
            chars = piece if piece in SPECIALS else "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            out += [self.vocab[s] for s in self.word(chars)]
        return out

    def encode(self, cleaned: str) -> tuple[list[int], list[Span]]:
        """Ids and spans into ``cleaned``."""
        ids, spans = [], []
        for m in self.pattern.finditer(cleaned):
            piece = m.group(0)
            if piece in SPECIALS:
                ids.append(self.vocab[piece]), spans.append(m.span())
                continue
            data = piece.encode("utf-8")
            char_of_byte = [m.start() + i for i, ch in enumerate(piece) for _ in range(len(ch.encode("utf-8")))]
            pos = 0
            for symbol in self.word("".join(self.byte_char[b] for b in data)):
                n = len(symbol) - (len(END_OF_WORD) if symbol.endswith(END_OF_WORD) else 0)
                ids.append(self.vocab[symbol])
                spans.append((char_of_byte[pos], char_of_byte[pos + n - 1] + 1))
                pos += n
        return ids, spans


class _RustBPE:
    """The same BPE built on Hugging Face ``tokenizers`` (the cleaning stays in Python: ftfy has no Rust twin)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        needs("tokenizers", "tokenizers")
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD))
        pattern = "|".join(SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"""
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex("(?i)" + pattern), behavior="removed", invert=True),  # keep matches only
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes -> printable chars
        ])
        # no added tokens: tokenizers would match them anywhere, while CLIP's regex only finds them where no
        # earlier alternative starts (")<end_of_text>" is punctuation + text there); such captions go to Python
        self.tok = tok


class ClipTokenizer:
    """CLIP's tokenizer: ``tok(texts)`` equals ``open_clip.get_tokenizer('ViT-B-32')(texts)``.

    Args:
        vocab_path: the merges file; default the one inside the ``open_clip`` package.
        context_length: tokens per row, SOT and EOT included.
        backend: ``"python"`` (default) or ``"rust"`` (Hugging Face tokenizers). End to end they run at the
            same speed (``python tools/bench.py tokenizers``): ``ftfy.fix_text`` dominates both, so the Rust
            BPE's edge on cleaned text does not show; Python needs no extra dependency.
    """

    sot, eot, pad, vocab_size = SOT, EOT, 0, 49408

    def __init__(self, vocab_path=None, context_length: int = CONTEXT_LENGTH, backend: str = "python"):
        if backend not in ("rust", "python"):
            raise ValueError(f"clip tokenizer: backend must be 'rust' or 'python', got {backend!r}")
        vocab, merges = load_vocab(vocab_path)
        self.context_length, self.backend = context_length, backend
        self._py = _PythonBPE(vocab, merges)  # also the exact path for captions quoting a special token
        self._rs = _RustBPE(vocab, merges) if backend == "rust" else None

    def _bpe(self, cleaned: list[str], offsets: bool) -> list:
        """(ids, spans into cleaned) per text, or ids alone when not ``offsets``."""
        if self._rs is None:
            return [self._py.encode(c) if offsets else self._py.ids(c) for c in cleaned]
        out = [(e.ids, e.offsets) if offsets else e.ids
               for e in self._rs.tok.encode_batch(cleaned, add_special_tokens=False)]
        for i, c in enumerate(cleaned):
            if "<start_of_text>" in c or "<end_of_text>" in c:
                out[i] = self._py.encode(c) if offsets else self._py.ids(c)
        return out

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[Span]]]:
        """Per text: BPE ids (no SOT/EOT, untruncated) and each token's span in the original text."""
        cleaned = [clean_with_offsets(t) for t in texts]
        raw = self._bpe([c for c, _ in cleaned], offsets=True)
        return [(ids, [_merge(src[s:e]) if e > s else (0, 0) for s, e in spans])
                for (ids, spans), (_, src) in zip(raw, cleaned)]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """BPE ids without framing (cleaning without offset tracking: the cheaper path)."""
        return self._bpe([clean(t) for t in texts], offsets=False)

    def frame(self, rows: list[list[int]], context_length: int | None = None) -> Framed:
        """``[SOT] ids [EOT]``, cut to T with EOT forced into the last slot, zero-padded; mask from lengths."""
        t = context_length or self.context_length
        ids = torch.zeros(len(rows), t, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, row in enumerate(rows):
            row = [SOT, *row[:t - 2], EOT] if len(row) + 2 > t else [SOT, *row, EOT]
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        return Framed(ids, mask)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> Tensor:
        """(B, T) int64 ids, exactly open_clip's ``SimpleTokenizer.__call__``."""
        return self.frame(self.encode([texts] if isinstance(texts, str) else list(texts)), context_length).ids

    def tokenize(self, texts: list[str], spans: list | None = None) -> tuple[Framed, list[Tensor]]:
        """Ids, mask and, when per-caption box spans are given (GLIP's ``tokens_positive``), per caption an
        (n_boxes, T) float map marking the tokens that overlap each box's character spans."""
        if spans is None:
            return self.frame(self.encode(texts)), []
        encoded = self.encode_with_offsets(texts)
        tokens = self.frame([ids for ids, _ in encoded])
        return tokens, [positive_map(offs, boxes, self.context_length) for (_, offs), boxes in zip(encoded, spans)]


def positive_map(offsets: list[Span], boxes: list, context_length: int, first: int = 1) -> Tensor:
    """(n, T) map: row k is 1 at position ``first + j`` when token j's span overlaps a span of box k.

    Overlap (rather than GLIP's char_to_token at start / end-1, which retries neighbours when they land on a
    space) covers any span; tokens cut by truncation and the final EOT slot are never marked.
    """
    out = torch.zeros(len(boxes), context_length)
    usable = min(len(offsets), context_length - 1 - first)  # room left before the EOT slot
    for k, box in enumerate(boxes):
        for start, end in box:
            for j in range(usable):
                s, e = offsets[j]
                if s < end and e > start:
                    out[k, first + j] = 1.0
    return out
