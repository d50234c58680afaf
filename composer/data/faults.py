"""Unreadable samples: a file that cannot be decoded (truncated, not an image, a failing disk) among good ones.

One bad file among thousands must not end a run. ``read_image`` raises ``SampleError`` (path and cause) for
a file it cannot decode; ``first_readable`` then stands in the next readable sample of the dataset, so every
batch keeps its size (the losses that gather over processes need equal batches on every rank) and the batch
stays a pure function of its position (the substitute is always the same one). The skipped files travel with
the batch, so the trainer can count them in its own process even when DataLoader workers decode the images,
warn about each, log the count and stop, naming the files, once they are more than the user allows.
"""
from __future__ import annotations

import os


class SampleError(ValueError):
    """A sample whose file cannot be read or decoded; ``str`` is one line naming the file and the cause."""

    def __init__(self, path: str | os.PathLike, cause: str):
        self.path, self.cause = str(path), cause
        super().__init__(f"{path}: cannot read this image ({cause})")


def describe(error: Exception, index: int) -> tuple[str, str]:
    """``(where, cause)`` of a failed read: the file when the error names it (else ``sample INDEX``) and why."""
    if isinstance(error, SampleError):
        return error.path, error.cause
    if isinstance(error, OSError) and error.filename:
        return str(error.filename), error.strerror or type(error).__name__
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"sample {index}", first[:200]


def first_readable(dataset, index: int, limit: int) -> tuple[object, tuple[tuple[str, str], ...]]:
    """``(sample, skipped)``: ``dataset[index]``, or when it cannot be read the first readable sample after it
    (cyclically), with ``describe`` of each unreadable one skipped on the way.

    Tries at most ``limit + 1`` samples; when all fail the sample is None (the caller stops: more than
    ``limit`` files are bad). Only ``SampleError`` and ``OSError`` count as unreadable files; any other
    exception is a bug and propagates.
    """
    skipped: list[tuple[str, str]] = []
    n = len(dataset)
    for offset in range(min(limit + 1, n)):
        i = (index + offset) % n
        try:
            return dataset[i], tuple(skipped)
        except (SampleError, OSError) as e:
            skipped.append(describe(e, i))
    return None, tuple(skipped)


class SkipUnreadable:
    """``dataset`` whose unreadable samples are replaced by the next readable ones (``first_readable``);
    ``skipped`` collects ``file: cause`` of those met in this process (the probes read in the main process).

    More than ``limit`` unreadable samples in a row is a ``SampleError`` naming them.
    """

    def __init__(self, dataset, limit: int = 10):
        self.dataset, self.limit = dataset, limit
        self.skipped: dict[str, str] = {}
        self.classes = getattr(dataset, "classes", [])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample, skipped = first_readable(self.dataset, index, self.limit)
        self.skipped.update(skipped)
        if sample is None:
            names = ", ".join(where for where, _ in skipped[:5])
            raise SampleError(skipped[0][0], f"and {len(skipped) - 1} unreadable samples after it: {names}")
        return sample
