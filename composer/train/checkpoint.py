"""Checkpoints: written atomically from finite weights, checksummed, verified on every read.

A run keeps ``RUN/checkpoints/step-00000120.pt`` files (the newest few). Each holds plain data only (tensors,
numbers, strings, lists, dicts), so ``torch.load(..., weights_only=True)`` reads it without unpickling code:

    format: 2                   step: optimizer steps taken     epoch: the epoch of the next step
    model: state_dict           optimizer: state_dict            rng: per-rank torch RNG states (CPU, CUDA)
    world_size: W               run: the trainer options (data spec, seed ...) for ``ptc eval``
    checksum: "sha256:<hex>"    of everything else (``composer.runtime.checksum.digest``): every tensor's
                                dtype, shape and bytes, every key and plain value, in order

Why a checksum of our own: torch's zip reader does not check the CRC of the tensor records, so bytes flipped on
disk load without complaint. The digest travels inside the file, so file and checksum are written (and renamed)
together; ``load`` recomputes it and refuses a mismatch. Files of format 1 (before checksums) are still read.

Writing goes to a temporary file in the same folder, is flushed to disk, renamed over the final name
(``os.replace`` is atomic on POSIX), and read back and verified: a crash or a full disk mid-write never leaves a
truncated checkpoint behind and never replaces a good one. A state whose floating-point tensors hold NaN or
infinity is refused before anything is written.

Set aside, never deleted: a corrupt checkpoint skipped by ``--fallback`` becomes ``step-N.pt.corrupt`` and one
holding diverged weights ``step-N.pt.diverged``; both are outside ``list_checkpoints`` (resume and rotation).
"""
from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path
from typing import Callable

import torch

from composer.runtime.checksum import digest

FORMAT = 2
_READABLE_FORMATS = (1, 2)
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used or written: the message names the file, the cause and what to do."""


class CorruptCheckpoint(CheckpointError):
    """A file that cannot be read or whose content no longer matches its checksum: ``path: cause; hint``."""

    def __init__(self, path: Path, cause: str, hint: str = ""):
        self.path, self.cause = path, cause
        super().__init__(f"{path}: {cause}{hint}")


class NonFiniteState(CheckpointError):
    """A state holding NaN or infinite values (``names``: where): refused before writing."""

    def __init__(self, path: Path, names: list[str]):
        self.names = names
        super().__init__(f"{path}: not written: {len(names)} tensor(s) hold NaN or infinity "
                         f"({', '.join(names[:3])}{' ...' if len(names) > 3 else ''})")


def path_for(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt"


# ------------------------------------------------------------------ finiteness

def nonfinite(state: dict, parts: tuple[str, ...] = ("model", "optimizer")) -> list[str]:
    """The names (``model/encoder.w``, ``optimizer/state/3/exp_avg``) of floating-point tensors under ``parts``
    of ``state`` that hold a NaN or an infinity."""
    found: list[str] = []

    def walk(obj, name: str) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
                found.append(name)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{name}/{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(value, f"{name}/{i}")

    for part in parts:
        if part in state:
            walk(state[part], part)
    return found


def _on_cpu(obj):
    """A copy of the nested containers with every tensor on the CPU (what is hashed is what is written)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_on_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_on_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------ writing and reading

def save(path: str | os.PathLike, state: dict, verify: bool = True) -> Path:
    """Write ``state`` with its checksum to ``path`` atomically (temporary file, fsync, rename, fsync of the
    folder), then (``verify``) read it back and check it.

    Raises ``NonFiniteState`` before writing anything if a model or optimizer tensor is not finite, and
    ``CheckpointError`` (one line: the path and the cause) if the file cannot be written, e.g. on a full disk;
    the file at ``path``, if any, is then left as it was.
    """
    path = Path(path)
    state = _on_cpu(state)
    bad = nonfinite(state)
    if bad:
        raise NonFiniteState(path, bad)
    state = {**state, "format": FORMAT}
    state["checksum"] = digest(state)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            _write(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write the checkpoint ({_os_reason(e)}); nothing was replaced"
                              f"{_newest_hint(path)}") from None
    except RuntimeError as e:  # torch's zip writer turns a failed write (ENOSPC ...) into "unexpected pos"
        cause = e.__context__ if isinstance(e.__context__, OSError) else None
        raise CheckpointError(f"{path}: cannot write the checkpoint ({_os_reason(cause) if cause else _first_line(e)}"
                              f"); nothing was replaced{_newest_hint(path)}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    if verify:
        try:
            load(path, mmap=True)
        except CorruptCheckpoint as e:
            kept = set_aside(path, "corrupt")
            raise CheckpointError(f"{path}: the checkpoint just written does not read back ({e.cause}); the disk "
                                  f"may be failing: it is kept as {kept.name}, the older checkpoints too") from None
    return path


def _write(state: dict, f) -> None:
    """``torch.save`` (a separate function so that tests can make the disk fail under it)."""
    torch.save(state, f)


def load(path: str | os.PathLike, advice: Callable[[Path], str] | None = None, mmap: bool = False) -> dict:
    """Read a checkpoint with ``weights_only=True`` onto the CPU and verify its checksum.

    Raises ``CorruptCheckpoint`` for a truncated file or a checksum mismatch (the message names the newest
    intact older checkpoint of the run and ``advice(that_path)``, what to pass to use it), ``CheckpointError``
    for a missing file or another program's checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, bit rot, a pickle with code: all unusable the same way
        raise CorruptCheckpoint(path, f"cannot read this checkpoint ({type(e).__name__}: {_first_line(e)})",
                                _intact_hint(path, advice)) from None
    if not isinstance(state, dict) or state.get("format") not in _READABLE_FORMATS or "model" not in state:
        raise CheckpointError(f"{path}: not a pretext-composer checkpoint (format {FORMAT})")
    if state["format"] >= 2:
        if state.get("checksum") != digest(state):
            raise CorruptCheckpoint(path, "corrupt checkpoint: its content no longer matches its checksum (the "
                                    "file changed after it was written)", _intact_hint(path, advice))
    elif not mmap:
        print(f"note: {path} was written without a checksum (format 1); it is read unverified", file=sys.stderr)
    return state


def verified(path: str | os.PathLike) -> bool:
    """Whether ``path`` reads back and matches its checksum."""
    try:
        load(path, advice=lambda _: "", mmap=True)
        return True
    except CheckpointError:
        return False


def newest_intact(run_dir: str | os.PathLike, before: int | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` (with ``step < before``) that reads back and matches its checksum."""
    for candidate in reversed(list_checkpoints(run_dir)):
        if (before is None or step_of(candidate) < before) and verified(candidate):
            return candidate
    return None


def _intact_hint(path: Path, advice: Callable[[Path], str] | None) -> str:
    if path.parent.name != "checkpoints":
        return ""
    older = newest_intact(path.parent.parent, before=step_of(path)) if step_of(path) >= 0 else None
    if older is None:
        return "; no intact earlier checkpoint exists"
    how = (advice or (lambda p: f"pass --checkpoint {p} to use it"))(older)
    return f"; the newest intact checkpoint is {older}" + (f": {how}" if how else "")


def _newest_hint(path: Path) -> str:
    found = list_checkpoints(path.parent.parent) if path.parent.name == "checkpoints" else []
    return f"; the newest checkpoint is still {found[-1]}" if found else ""


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _os_reason(e: OSError) -> str:
    return f"{e.strerror or type(e).__name__} [{errno.errorcode.get(e.errno, e.errno)}]" if e.errno else str(e)


# ------------------------------------------------------------------ the run's checkpoints

def step_of(path: str | os.PathLike) -> int:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else -1


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoints, oldest first (files set aside as ``.corrupt`` or ``.diverged`` are not listed)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=step_of)


def latest(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve(target: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest checkpoint of a run folder; ``CheckpointError`` when there is none."""
    target = Path(target)
    if target.is_file():
        return target
    if target.is_dir():
        found = latest(target)
        if found is None:
            raise CheckpointError(f"{target}: the run folder holds no checkpoint (expected checkpoints/step-*.pt)")
        return found
    raise CheckpointError(f"{target}: no such run folder or checkpoint file")


def set_aside(path: str | os.PathLike, reason: str) -> Path:
    """Rename ``step-N.pt`` to ``step-N.pt.<reason>`` (``.<reason>.2`` ... if taken): kept, but no longer
    resumed from or rotated."""
    path = Path(path)
    target, k = path.with_name(f"{path.name}.{reason}"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.{reason}.{k}")
    os.replace(path, target)
    return target


def prune(run_dir: str | os.PathLike, keep: int, newest: str | os.PathLike | None = None) -> None:
    """Delete the checkpoints older than the newest ``keep``, counting those up to ``newest`` (the file just
    written and verified; default the newest on disk) and never deleting ``newest`` nor the one before it.

    The one before is kept even with ``keep: 1``: until the loss of the next step is known to be finite, the
    newest may hold weights that diverged, and the previous one is the last good one. Checkpoints after
    ``newest`` (left by a run resumed from an earlier one) are neither counted nor deleted here.
    """
    found = list_checkpoints(run_dir)
    last = step_of(newest) if newest is not None else (step_of(found[-1]) if found else -1)
    upto = [p for p in found if step_of(p) <= last]
    for old in upto[:-max(keep, 2)] if keep > 0 else []:
        old.unlink(missing_ok=True)


def load_model_state(model: torch.nn.Module, state: dict, path: str | os.PathLike) -> None:
    """``model.load_state_dict(state['model'])`` with a one-line error when the graph does not match."""
    try:
        result = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as e:  # a shape mismatch
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise CheckpointError(f"{path}: the checkpoint does not match this graph "
                              f"({lines[0] if lines else str(e).splitlines()[0]})") from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(f"{path}: the checkpoint does not match this graph (missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{'...' if len(unexpected) > 3 else ''})")
