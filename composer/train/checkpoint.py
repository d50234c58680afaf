"""Checkpoints: written atomically, read with ``weights_only=True``, named by the step they follow.

A run keeps ``RUN/checkpoints/step-00000120.pt`` files (the newest few). Each holds plain data only (tensors,
numbers, strings, lists, dicts), so ``torch.load(..., weights_only=True)`` reads it without unpickling code:

    format: 1                   step: optimizer steps taken     epoch: the epoch of the next step
    model: state_dict           optimizer: state_dict            rng: per-rank torch RNG states (CPU, CUDA)
    world_size: W               run: the trainer options (data spec, seed ...) for ``ptc eval``

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed over the final name
(``os.replace`` is atomic on POSIX), so a crash mid-write never leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

FORMAT = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used: the message names the file, the cause and what to do."""


def path_for(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt"


def save(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True`` onto the CPU; ``CheckpointError`` if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bit rot, a pickle with code: all unusable the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot read this checkpoint ({type(e).__name__}: {first[:200]})"
                              f"{_previous_hint(path)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path}: not a pretext-composer checkpoint (format {FORMAT})")
    return state


def _previous_hint(path: Path) -> str:
    older = [p for p in list_checkpoints(path.parent.parent) if p != path and step_of(p) < step_of(path)]
    if older:
        return f"; the previous checkpoint {older[-1]} is intact: remove the broken file to resume from it"
    return "; no earlier checkpoint exists"


def step_of(path: str | os.PathLike) -> int:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else -1


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoints, oldest first."""
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


def prune(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
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
