"""What a run keeps and where it starts: the checks of the run folder, the checkpoint a run resumes from (with
``--fallback`` past corrupt ones), checkpoints written from finite weights only, and the divergence stop.

Nothing already written is lost or silently replaced:

- ``--out`` must be a folder that can be written; one holding checkpoints needs ``--resume``, and one holding
  the metrics of an earlier run but no checkpoint needs ``--overwrite`` (the logs would be replaced).
- A corrupt checkpoint (truncated, or its checksum no longer matching) is one line naming the newest intact one;
  ``--fallback`` resumes from that one and renames the corrupt files ``*.pt.corrupt``.
- A non-finite loss at step ``s`` stops the run before the optimizer step. The checkpoint of step ``s``, if this
  run wrote one, holds the very weights that gave it (saved after step ``s - 1`` moved them): it is renamed
  ``*.pt.diverged``, and the message names the newest intact checkpoint before ``s``, from which ``--resume``
  then continues.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from composer.runtime.errors import UserError
from composer.train import checkpoint, launch


class TrainError(UserError):
    """The run cannot go on (diverged loss, a run folder that is not ours to overwrite): one line, exit 2."""


def check_out(run_dir: Path) -> None:
    """Refuse an ``--out`` that is a file, or under a folder this process cannot write (read-only file system,
    no permission), before anything is built; nothing is created here."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"--out {run_dir}: a file, not a folder; expected a run folder (new or of ptc train)")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TrainError(f"--out {run_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(existing) else "permission denied"
        raise TrainError(f"--out {run_dir}: cannot write in {existing} ({why}); choose another --out")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def resume_target(run_dir: Path, opts, env: launch.Launch) -> tuple[Path | None, dict | None]:
    """``(checkpoint, its state)`` to resume from, ``(None, None)`` to start afresh; refuses to overwrite a run
    that has checkpoints or metrics; with ``opts.fallback`` steps back past corrupt checkpoints."""
    restarted = env.restarted and same_elastic_job(run_dir)
    if isinstance(opts.resume, str) and opts.resume:
        target = checkpoint.resolve(opts.resume)
    else:
        target = checkpoint.latest(run_dir)
        if target is not None and not (opts.resume is True or restarted):
            raise TrainError(f"{run_dir} already holds checkpoints ({target.name}); pass --resume to continue "
                             f"that run or --out to start another")
    if target is None:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and metrics.stat().st_size > 0 and not (opts.overwrite or restarted):
            raise TrainError(f"{run_dir} holds the metrics of an earlier run (metrics.jsonl) but no checkpoint; "
                             f"pass --overwrite to replace them or --out to start another run")
        return None, None
    try:
        return target, checkpoint.load(target, advice=_resume_advice)
    except checkpoint.CorruptCheckpoint as error:
        if not opts.fallback:
            raise
        return _fall_back(target, error, env)


def _resume_advice(intact: Path) -> str:
    return f"pass --fallback to resume from it (or --resume {intact})"


def _fall_back(target: Path, error: checkpoint.CorruptCheckpoint, env: launch.Launch) -> tuple[Path, dict]:
    """The newest intact checkpoint older than the corrupt ``target``; the corrupt ones are set aside (rank 0)."""
    older = [p for p in checkpoint.list_checkpoints(target.parent.parent) if checkpoint.step_of(p) <
             checkpoint.step_of(target)] if target.parent.name == "checkpoints" else []
    corrupt = [target]
    for candidate in reversed(older):
        try:
            state = checkpoint.load(candidate, advice=lambda _: "")
        except checkpoint.CheckpointError:  # corrupt too (or set aside meanwhile by rank 0)
            corrupt.append(candidate)
            continue
        if env.is_main:
            moved = [_set_aside(p, "corrupt") for p in corrupt if p.exists()]
            print(f"warning: {error.path}: {error.cause}; resuming from the newest intact checkpoint {candidate} "
                  f"(--fallback); the corrupt file(s) kept as {', '.join(str(m) for m in moved)}", file=sys.stderr)
        return candidate, state
    raise error


def _set_aside(path: Path, reason: str) -> Path:
    try:
        return checkpoint.set_aside(path, reason)
    except OSError as e:  # a read-only folder: the file stays, the run goes on from the older one
        print(f"note: could not rename {path} ({e.strerror}); it stays in place", file=sys.stderr)
        return path


def same_elastic_job(run_dir: Path) -> bool:
    """Whether ``run_dir`` was started by this torchrun job (its rendezvous id), so a restarted worker resumes
    its own run and never an older run it was refusing to overwrite."""
    try:
        recorded = json.loads((run_dir / "run.json").read_text()).get("elastic_run_id")
    except (OSError, ValueError):
        return False
    return recorded is not None and recorded == os.environ.get("TORCHELASTIC_RUN_ID")


def save_checkpoint(run_dir: Path, model, optimizer, step: int, spe: int, env: launch.Launch, run_options: dict,
                    keep: int, skipped: dict[str, str]) -> Path | None:
    """Gather every rank's RNG state, then rank 0 writes the checkpoint (verified) and prunes old ones.

    Weights that hold NaN or infinity are never written: the run stops naming the last good checkpoint.
    Returns the path written (rank 0) or None.
    """
    if env.world_size > 1:  # every rank stops together (the weights are the same on all)
        bad = checkpoint.nonfinite({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        if bad:
            raise _not_finite(run_dir, step, ", ".join(bad[:3]))
    rng = launch.gather_objects(torch.get_rng_state())
    skipped_by_rank = launch.gather_objects(dict(skipped))  # each rank keeps counting its own after a resume
    cuda_rng = launch.gather_objects(torch.cuda.get_rng_state(env.device)) if env.device.type == "cuda" else []
    if not env.is_main:
        return None
    state = {"format": checkpoint.FORMAT, "step": step, "epoch": step // spe, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": {"torch": rng, "cuda": cuda_rng},
             "world_size": env.world_size, "skipped_samples": {k: v for files in skipped_by_rank for k, v in files.items()},
             "skipped_by_rank": skipped_by_rank,
             "run": {k: v for k, v in run_options.items() if isinstance(v, (str, int, float, bool))}}
    path = checkpoint.path_for(run_dir, step)
    try:
        checkpoint.save(path, state)
    except checkpoint.NonFiniteState as e:
        raise _not_finite(run_dir, step, ", ".join(e.names[:3])) from None
    checkpoint.prune(run_dir, keep, newest=path)
    return path


def skipped_of_rank(state: dict | None, env: launch.Launch) -> dict[str, str] | None:
    """The unreadable files this rank had met when ``state`` was saved; with another number of ranks, rank 0
    takes them all (the total carries over, the split cannot)."""
    if not state:
        return None
    by_rank = state.get("skipped_by_rank")
    if isinstance(by_rank, list) and len(by_rank) == env.world_size:
        return by_rank[env.rank]
    return state.get("skipped_samples") if env.rank == 0 else None


def _not_finite(run_dir: Path, step: int, names: str) -> TrainError:
    good = checkpoint.newest_intact(run_dir, before=step)
    return TrainError(f"the weights hold NaN or infinity after step {step} ({names}); no checkpoint written. "
                      f"Last good checkpoint: {good or 'none'}; to go on, fix the cause (e.g. lower train.lr) and "
                      f"pass --resume")


def diverged(run_dir: Path, loss: float, step: int, epoch: int, lr: float, written: Path | None,
             env: launch.Launch) -> TrainError:
    """The error of a non-finite loss at ``step``; ``written``, the checkpoint this run wrote last, is set aside
    as ``.diverged`` when it is the one of ``step`` (its weights gave the loss)."""
    note = ""
    if written is not None and checkpoint.step_of(written) == step and written.exists() and env.is_main:
        moved = _set_aside(written, "diverged")
        note = f"; {written.name}, which holds the weights that gave it, is kept as {moved.name}"
    good = checkpoint.newest_intact(run_dir, before=step)
    return TrainError(f"the loss is {loss} at step {step} (epoch {epoch}, lr {lr:.4g}); training stopped before "
                      f"the optimizer step. Last good checkpoint: "
                      f"{good or f'none (no checkpoint before step {step})'}{note}; to go on, fix the cause "
                      f"(e.g. lower train.lr) and pass --resume")
