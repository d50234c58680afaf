"""User-facing errors: one line each, ``file:line: node 'name': what is wrong; what was expected``."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Loc:
    """Where a value came from: a file and a 1-based line (``<--set>`` for command-line overrides)."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class GraphError(Exception):
    """A mistake in a graph file. ``str()`` is the one-line message the CLI prints."""

    def __init__(self, message: str, loc: Loc | None = None, node: str | None = None,
                 expected: str | None = None):
        self.message, self.loc, self.node, self.expected = message, loc, node, expected
        super().__init__(self.format())

    def format(self) -> str:
        parts = []
        if self.loc is not None:
            parts.append(f"{self.loc}: ")
        if self.node:
            parts.append(f"node '{self.node}': ")
        parts.append(self.message)
        if self.expected:
            parts.append(f"; expected {self.expected}")
        return "".join(parts).replace("\n", " ")


class GraphErrors(Exception):
    """Several ``GraphError``s found by one check (the validator reports all it can find)."""

    def __init__(self, errors: list[GraphError]):
        self.errors = list(errors)
        super().__init__("\n".join(e.format() for e in self.errors))


class UserError(Exception):
    """A mistake outside a graph file (a bad data spec, a missing run folder, an unwritable path): one line."""


def os_error_line(error: OSError, path=None, doing: str = "") -> str:
    """One line for a file-system error: ``PATH: DOING failed: No space left on device [ENOSPC]``.

    ``path`` defaults to the file the error names; ``doing`` (e.g. "cannot write the metrics") replaces the
    generic wording."""
    import errno
    if error.errno is None and path is None:  # raised with a message of ours (e.g. "image folder: not found")
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    where = path if path is not None else error.filename
    code = errno.errorcode.get(error.errno or 0)
    reason = (error.strerror or str(error) or type(error).__name__) + (f" [{code}]" if code else "")
    head = f"{where}: " if where is not None else ""
    return f"{head}{doing or 'file-system error'} ({reason})"
