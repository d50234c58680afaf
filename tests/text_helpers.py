"""Deterministic, varied test captions for the text tokenizer tests (Unicode, HTML entities, over-long text)."""
from __future__ import annotations

import random

WORDS = ("a photo of the dog cat sitting on red bench near river in Paris at night with two people "
         "riding bicycles down street café naïve façade über Zürich São Paulo jalapeño crème brûlée "
         "it's they're we've I'm you'll he'd don't rock'n'roll e-mail 3.14 1,000,000 #hashtag @user "
         "http://example.com/a?b=c&d=e 东京 北京 서울 日本語 テスト Привет мир Ελληνικά ΟΔΟΣ İstanbul straße ﬁne "
         "Ã©tÃ© cafÃ© â€œquotedâ€\x9d Ã¼ber").split(" ")
EXTRAS = ("🐶", "🎉🎉", "👩‍👩‍👧", "❤️", "&amp;", "&quot;hi&quot;", "&#39;", "&lt;b&gt;", "&amp;amp;", "&#x1F600;",
          "&nbsp;", "!!!", "?!", "...", "—", "“curly”", "½", "K", "ſ", "'S", "\t", "\n", "   ", "\u00a0", "\u3000",
          "<end_of_text>", "WWW.SITE.COM", "2024-01-01", "$5", "(x)", "[y]", "{z}", "\u0301", "ǅ", "ﬃ")


def make_captions(n: int = 1200, seed: int = 0) -> list[str]:
    """``n`` captions: mixed words and extras, random case and spacing, every 50th several hundred words long."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(300, 700) if i % 50 == 49 else rng.randint(0, 25)
        parts = []
        for _ in range(length):
            w = rng.choice(EXTRAS) if rng.random() < 0.2 else rng.choice(WORDS)
            w = {0: w.upper(), 1: w.title()}.get(rng.randrange(6), w)
            parts.append(w)
            parts.append(rng.choice([" ", " ", " ", "  ", "", ", ", ". ", "\t"]))
        out.append("".join(parts))
    return out
