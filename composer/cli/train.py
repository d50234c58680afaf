"""train a graph: ptc train GRAPH [--data SPEC] [--epochs N | --steps N] [--batch-size B] [--resume] ...

Multi-process: ``torchrun --nproc_per_node N -m composer train GRAPH ...`` (add ``--max-restarts K`` to
recover from a dead worker: the restarted workers resume from the newest checkpoint).
"""
from __future__ import annotations

import argparse

from composer.runtime.errors import UserError, os_error_line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="graph file (.yaml)")
    p.add_argument("--data", help="data spec, e.g. shapes:n=2000,size=32 or folder:PATH (default: the graph's "
                                  "'data:', else shapes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a graph value, e.g. --set train.lr=0.1")
    p.add_argument("--variant", help="apply one of the graph's named variants (e.g. tiny)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train for N epochs (sets train.epochs)")
    length.add_argument("--steps", type=int, help="train for N optimizer steps (sets train.steps)")
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step (sets train.batch_size)")
    p.add_argument("--out", help="run folder (default runs/<graph name>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_OR_CKPT",
                   help="continue from the newest checkpoint of --out (or of the given run folder/checkpoint)")
    p.add_argument("--fallback", action="store_true",
                   help="with --resume: if that checkpoint is corrupt, resume from the newest intact one (the "
                        "corrupt files are kept as *.pt.corrupt)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds an earlier run's metrics but no checkpoint")
    p.add_argument("--max-bad-samples", type=int, default=10, metavar="N",
                   help="unreadable images skipped with a warning before the run stops (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model stage")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (0: load in the main process)")
    p.add_argument("--augment", choices=["auto", "device", "workers"], default="auto",
                   help="where the augmentations run: batched on the training device, or per sample in the "
                        "DataLoader workers (default auto: device on an accelerator, workers on a CPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads (default: OMP_NUM_THREADS, else the cores left after the workers)")
    p.add_argument("--ckpt-every", type=int, default=0, metavar="STEPS",
                   help="checkpoint every N steps (default: every epoch)")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept (default 2)")
    p.add_argument("--log-every", type=int, default=1, metavar="STEPS")
    p.add_argument("--probe-every", type=int, default=0, metavar="STEPS",
                   help="online kNN probe every N steps (default: every epoch; -1: never)")
    p.add_argument("--probe-data", help="data spec of the online probe (default: --data)")
    p.add_argument("--probe-train", type=int, default=1000, help="probe bank size (training split)")
    p.add_argument("--probe-val", type=int, default=500, help="probe queries (validation split)")
    p.add_argument("--profile", action="store_true", help="write torch.profiler traces to RUN/profile")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from composer.graph import load
    from composer.train import TrainOptions, train
    from composer.train.checkpoint import CheckpointError
    overrides: dict = {}
    for item in args.overrides:
        if "=" not in item:
            raise UserError(f"bad --set {item!r}; expected PATH=VALUE, e.g. train.lr=0.1")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    if args.epochs is not None:
        overrides.update({"train.epochs": args.epochs, "train.steps": None})
    if args.steps is not None:
        overrides.update({"train.steps": args.steps, "train.epochs": None})
    if args.batch_size is not None:
        overrides["train.batch_size"] = args.batch_size
    for name in ("epochs", "steps", "batch_size", "workers", "log_every", "max_bad_samples"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("workers", "max_bad_samples") else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    spec = load(args.graph, overrides, args.variant)
    opts = TrainOptions(
        data=args.data, out=args.out, seed=args.seed, device=args.device, precision=args.precision,
        compile=args.compile, workers=args.workers, augment=args.augment, threads=args.threads, resume=args.resume,
        fallback=args.fallback, overwrite=args.overwrite, max_bad_samples=args.max_bad_samples,
        ckpt_every=args.ckpt_every, keep=args.keep,
        log_every=args.log_every, probe_every=args.probe_every, probe_data=args.probe_data,
        probe_train=args.probe_train, probe_val=args.probe_val, profile=args.profile, progress=not args.no_progress)
    try:
        train(spec, opts)
    except (CheckpointError, ValueError) as e:
        raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    except OSError as e:  # a file-system error writing the run folder (full disk, read-only, removed ...)
        raise UserError(os_error_line(e)) from e
    return 0
