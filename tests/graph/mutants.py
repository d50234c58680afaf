"""Mutants of the shipped graphs for tests/graph/test_mutations.py: small edits a user could make by mistake.

Each mutant is the text of one graph file with one edit, a ``kind`` (``sg``, ``type``, ``flow``, ``cycle``,
``number``) and, for number edits, the block, parameter and new value, so that a mutant which still checks can be
compared with the parameter's declared range. Edits are made on the text so that line numbers stay meaningful.
"""
from __future__ import annotations

import dataclasses
import re

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
KEY = re.compile(r"(\w+):")
BAD_NUMBERS = (".nan", "-{v}", "0", "1.0e+30", "{v}1", "abc")  # NaN, negative, zero, huge, a digit more, a string
FORMS = dict(zip(BAD_NUMBERS, ("nan", "negative", "zero", "huge", "digit", "string")))


@dataclasses.dataclass(frozen=True)
class Mutant:
    kind: str
    line: int  # 1-based line of the edit
    text: str
    section: str  # "base" or "tiny": where the edited value sits (tiny: inside variants.tiny)
    block: str | None = None
    param: str | None = None
    value: str | None = None
    form: str | None = None  # for numbers: nan, negative, zero, huge, digit, string (FORMS)

    @property
    def id(self) -> str:
        what = f"{self.block}.{self.param}={self.value}" if self.param else ""
        return f"{self.kind}@{self.line}{'~' + what if what else ''}"


def mutants(text: str) -> list[Mutant]:
    lines = text.splitlines(keepends=True)
    sections = _sections(lines)
    out: list[Mutant] = []

    def put(kind, i, new_line, **kw):
        out.append(Mutant(kind, i + 1, "".join(lines[:i] + [new_line] + lines[i + 1:]), sections[i][0], **kw))

    flow = [i for i, (sec, top) in enumerate(sections) if top == "flow" and _indent(lines[i]) == 2 and sec == "base"]
    for i, line in enumerate(lines):
        code, comment = _split_comment(line)
        for m in re.finditer(r"!sg\s+", code):  # a removed stop-gradient
            put("sg", i, code[:m.start()] + code[m.end():] + comment)
        for m in re.finditer(r"type:\s*([a-z_]+)\.([a-z_0-9]+)", code):  # a misspelt block type
            put("type", i, code[:m.end()] + "x" + code[m.end():] + comment)
        if sections[i][1] == "blocks" or (sections[i][0] == "tiny" and _in_variant_blocks(lines, i)):
            for m in NUMBER.finditer(code):
                keys = KEY.findall(code[:m.start()])
                block = _block_of(lines, i)
                if not keys or block is None or keys[-1] == "type":
                    continue
                for bad in BAD_NUMBERS:
                    value = bad.format(v=m.group().lstrip("-"))
                    put("number", i, code[:m.start()] + value + code[m.end():] + comment, block=block,
                        param=keys[-1], value=value, form=FORMS[bad])
    for i in flow:  # a deleted flow line (one-line entries only)
        if i + 1 < len(lines) and _indent(lines[i + 1]) > 2 and lines[i + 1].strip():
            continue
        out.append(Mutant("flow", i + 1, "".join(lines[:i] + lines[i + 1:]), "base"))
    if len(flow) >= 2:  # a cycle: the first value reads the last one
        first, last = flow[0], flow[-1]
        name_last = lines[last].split(":", 1)[0].strip()
        code, comment = _split_comment(lines[first])
        key, rest = code.split(":", 1)
        words = re.findall(r"(?<![\w.])([a-z_][a-z_0-9]*)(?=\s*[},\]])", rest)
        if words:
            new_rest = re.sub(rf"(?<![\w.]){words[-1]}(?=\s*[}},\]])", name_last, rest, count=1)
            put("cycle", first, key + ":" + new_rest + comment)
    return out


def _sections(lines) -> list[tuple[str, str | None]]:
    """(``base``/``tiny``, top-level key) of every line."""
    out, top, variant = [], None, None
    for line in lines:
        if line.strip() and not line.startswith((" ", "#")):
            top = line.split(":", 1)[0].strip()
            variant = None
        elif top == "variants" and _indent(line) == 2 and line.strip() and not line.strip().startswith("#"):
            variant = line.split(":", 1)[0].strip()
        out.append(("tiny" if top == "variants" and variant == "tiny" else "base", top))
    return out


def _in_variant_blocks(lines, i) -> bool:
    for j in range(i, -1, -1):
        if _indent(lines[j]) == 4 and lines[j].strip() and not lines[j].strip().startswith("#"):
            return lines[j].strip().startswith("blocks:")
    return False


def _block_of(lines, i) -> str | None:
    """The block a parameter line belongs to: the nearest entry at the block-name indent above (2 or 6), written
    in flow style (``name: {...}``) or block style (``name:`` with its keys on the lines below)."""
    start = i
    while start >= 0:
        line = lines[start]
        ind = _indent(line)
        code = _split_comment(line)[0]
        if code.strip() and ind in (2, 6) and re.match(r"\s*\w+:\s*(\{|$)", code.rstrip()):  # name: {..} or name:
            return line.split(":", 1)[0].strip()
        if line.strip() and ind < 2:
            return None
        start -= 1
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment with newline): numbers inside comments are not mutated."""
    body = line.rstrip("\n")
    quoted = False
    for k, ch in enumerate(body):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted and (k == 0 or body[k - 1] == " "):
            return body[:k], body[k:] + "\n"
    return body, "\n"
