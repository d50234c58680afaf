"""Training: one visible loop in the nanoGPT style, with DDP, autocast and torch.compile inline.

    spec = composer.load("graphs/moco_v2.yaml", variant="tiny")
    run_dir = composer.train.train(spec, TrainOptions(data="shapes:n=2000,size=32", out="runs/moco"))

One optimizer step, in order (every state update happens after the step):

    lr, wd   ← schedules at this step (per step, as MoCo v3, DINO, MAE, SimCLR do)
    for each of ``accumulate`` micro-batches:   forward (bf16 autocast if asked) → backward of loss/accumulate
                                               (DDP all-reduces gradients on the last micro-batch only)
    loss     ← mean over processes; a NaN or infinite loss stops the run here, before the step
    freeze   → gradients of ``train.freeze`` parameters dropped (DINO's last layer in epoch 0)
    clip     → global or per-parameter gradient norms
    optimizer.step(); model.update(outputs, step)   (EMA teachers, queues, centres, clamps)
    log, online kNN probe, checkpoint (rank 0; from finite weights only, checksummed, see composer.train.runstate)

Processes: under ``torchrun`` every process runs this loop on its own micro-batches (``composer.train.batches``)
with the model wrapped in DDP (``broadcast_buffers=False``: memories stay identical because their updates
gather from every rank). A worker that torchrun restarts (``--max-restarts``) resumes from the newest checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch

from composer.graph import build, check
from composer.graph.model import Output
from composer.graph.train_section import parse_train
from composer.runtime import collectives
from composer.train import checkpoint, launch
from composer.train.batches import DeviceStage, SkippedSamples, make_loader, raw_batch, steps_per_epoch
from composer.train.monitor import collapse_scalars, embedding_of
from composer.train.optim import (build_optimizer, clip_gradients, freeze_gradients, group_values,
                                  set_hyperparameters)
from composer.train.runlog import RunLog, write_run_files
from composer.train.runstate import (TrainError, check_out, diverged, resume_target, save_checkpoint,
                                     skipped_of_rank)

__all__ = ["TrainError", "TrainOptions", "train"]


@dataclasses.dataclass
class TrainOptions:
    """How to run a graph (the method itself, optimizer included, is the graph's ``train:`` section)."""

    data: str | None = None          # data spec (composer.data.spec); default: the graph's ``data:``, else shapes
    out: str | None = None           # run folder; default runs/<graph name>
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:K
    precision: str = "fp32"          # fp32 | bf16 (autocast; losses compute in float32)
    compile: bool = False            # torch.compile the model stage
    workers: int = 2                 # DataLoader worker processes (0: data stage in the main process)
    augment: str = "auto"            # device | workers | auto (device on an accelerator): see train.batches
    threads: int = 0                 # intra-op threads of the training process; 0: launch.choose_threads
    resume: bool | str = False       # True: newest checkpoint of ``out`` if any; a path: that run or checkpoint
    fallback: bool = False           # resume from the newest intact checkpoint when the one asked for is corrupt
    overwrite: bool = False          # start afresh in a folder holding an earlier run's metrics (no checkpoint)
    max_bad_samples: int = 10        # unreadable samples skipped (with a warning) before the run stops
    ckpt_every: int = 0              # steps between checkpoints; 0: at the end of every epoch
    keep: int = 2                    # checkpoints kept
    log_every: int = 1               # steps between logged scalars
    probe_every: int = 0             # steps between online kNN probes; 0: every epoch; -1: never
    probe_data: str | None = None    # default: the training data spec
    probe_train: int = 1000          # bank size (training split) of the online probe
    probe_val: int = 500             # queries (validation split) of the online probe
    profile: bool = False            # torch.profiler traces of steps 2-4 into RUN/profile
    progress: bool = True
    tensorboard: bool = True
    check: bool = True               # validate the graph (static checks and a dry run) before building it


def train(spec, opts: TrainOptions | None = None) -> Path:
    """Train ``spec`` (a loaded GraphSpec) and return the run folder."""
    opts = opts or TrainOptions()
    cfg = parse_train(spec)
    env = launch.init(opts.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(launch.choose_threads(opts.threads, opts.workers))
    try:
        return _train(spec, cfg, opts, env)
    finally:
        torch.set_num_threads(threads)
        launch.close(env)


def _train(spec, cfg, opts: TrainOptions, env: launch.Launch) -> Path:
    from composer.data.spec import open_dataset
    main = env.is_main
    run_dir = Path(opts.out or Path("runs") / spec.name)
    check_out(run_dir)
    resume_from, state = resume_target(run_dir, opts, env)

    # ---- data: this rank's micro-batches of the global batch
    data_spec = opts.data or spec.data_spec or "shapes"
    dataset = open_dataset(data_spec, "train")
    micro = cfg.micro_batch(env.world_size)
    spe = steps_per_epoch(len(dataset), cfg.batch_size)
    total = cfg.steps or cfg.epochs * spe

    # ---- model: the same seed on every rank gives the same initialisation (checked first: the validator's
    # dry run must not move the generator, so `ptc eval --random-init` can rebuild this exact start)
    if opts.check:
        for warning in check(spec).warnings:
            if main:
                print(warning, file=sys.stderr)
    # built on the CPU, then moved: the data stage must stay on the CPU (DataLoader workers cannot touch CUDA,
    # and torchvision keeps tensors in its transforms), and the initial weights do not depend on the device
    launch.seed_all(opts.seed)
    model = build(spec, check=False).to(env.device)
    model.bind_schedules(total, spe)
    lr_schedule, wd_schedule = cfg.lr.bind(total, spe), cfg.weight_decay.bind(total, spe)
    lr_factor = cfg.lr_factor()
    for group in cfg.param_groups:
        group.bind(total, spe)
    if cfg.sync_bn and env.world_size > 1:
        if env.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif main:
            print("note: train.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); BatchNorm statistics "
                  "stay per process", file=sys.stderr)
    optimizer = build_optimizer(model, cfg)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    start = 0
    if resume_from is not None:
        checkpoint.load_model_state(model, state, resume_from)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        rng = state.get("rng", {})
        if len(rng.get("torch", [])) == env.world_size:  # the same ranks: continue each stream exactly
            torch.set_rng_state(rng["torch"][env.rank])
            if env.device.type == "cuda" and len(rng.get("cuda", [])) == env.world_size:
                torch.cuda.set_rng_state(rng["cuda"][env.rank], env.device)
        else:
            launch.seed_all(opts.seed + env.rank + 7919 * start)
    else:
        launch.seed_all(opts.seed + env.rank)  # per-rank stream: dropout, drop-path

    if opts.compile:
        model.compile()
    ddp = model
    if env.world_size > 1:
        ddp = _wrap_ddp(model, env)

    stage, keep, device_stage = model.data_stage, model.model_inputs, None
    if _augment_where(opts, env) == "device":  # workers collate raw uint8; the data stage runs here, batched
        device_stage = DeviceStage(model.data_stage, model.model_inputs, opts.seed, env.rank)
        stage, keep = raw_batch, device_stage.raw_keys
    loader, _ = make_loader(dataset, stage, keep, batch_size=cfg.batch_size,
                            accumulate=cfg.accumulate, world_size=env.world_size, rank=env.rank, seed=opts.seed,
                            start_step=start, total_steps=total, num_workers=opts.workers,
                            pin_memory=env.device.type == "cuda", max_bad=opts.max_bad_samples)
    run_options = {**dataclasses.asdict(opts), "data": data_spec, "out": str(run_dir), "graph": spec.path,
                   "world_size": env.world_size, "micro_batch": micro, "steps_per_epoch": spe, "total_steps": total,
                   "elastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID")}
    if main:
        write_run_files(run_dir, spec, run_options)
    log = RunLog(run_dir, main, total, start, resumed=resume_from is not None, progress=opts.progress,
                 tensorboard=opts.tensorboard, desc=spec.name)
    if resume_from is not None:
        log.message(f"resumed from {resume_from} at step {start}")
    skipped = SkippedSamples(opts.max_bad_samples, log.message if main else _rank_warning,
                             skipped_of_rank(state, env), env.rank, env.world_size)
    written = None  # the checkpoint this process wrote last
    for name, why in (device_stage.status if device_stage is not None else {}).items():
        log.message(f"augment block {name!r}: " + ("batched on the device" if why is None else
                                                   f"per sample on the device ({why})"))
    probe = _OnlineProbe(opts, data_spec, main)
    if start == 0:
        probe.maybe(log, model, env, 0)  # the encoder at initialisation: the baseline the run must beat
    profiler = _profiler(run_dir, env) if opts.profile else None
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16")

    model.train()
    batches = iter(loader)
    objective_terms = list(spec.objective) if len(spec.objective) > 1 else []
    t_last, data_time = time.perf_counter(), 0.0
    try:
        for step in range(start, total):
            epoch = step // spe
            lr = lr_schedule.at(step) * lr_factor
            wd = wd_schedule.at(step)
            set_hyperparameters(optimizer, lr, wd, group_values(cfg, step))

            # ---- forward / backward over the micro-batches; gradients are all-reduced on the last one
            # [loss, terms..., skipped samples of rank 0..W-1 (times W: the mean over ranks is each count)]
            sums = torch.zeros(1 + len(objective_terms) + env.world_size, device=env.device)
            n_sums = 1 + len(objective_terms)
            outputs = []
            for j in range(cfg.accumulate):
                t0 = time.perf_counter()
                tag, batch, bad = next(batches)
                skipped.add(bad, batch is None)  # warns about new unreadable files; stops past --max-bad-samples
                if device_stage is not None:  # decoding (decode=device) and augmentation on the device
                    batch = device_stage(tag, batch, env.device)
                batch = _to_device(batch, env.device)
                data_time += time.perf_counter() - t0
                if ddp is not model:
                    ddp.require_backward_grad_sync = j == cfg.accumulate - 1
                with autocast:
                    out = ddp(batch)
                (out.loss / cfg.accumulate).backward()
                terms = [out.values[t].detach().float().reshape(()) for t in objective_terms]
                sums[:n_sums] += torch.stack([out.loss.detach().float(), *terms]) / cfg.accumulate
                outputs.append(out)

            # ---- the global loss; stop before a step that would spread NaNs into the weights
            sums[n_sums + env.rank] = len(skipped) * env.world_size
            sums = collectives.all_reduce_mean(sums)
            per_rank = [round(c) for c in sums[n_sums:].tolist()]
            skipped.check(per_rank, launch.gather_objects)  # the same counts on every rank: they stop together
            loss = float(sums[0])
            if not math.isfinite(loss):
                raise diverged(run_dir, loss, step, epoch, lr, written, env)

            # ---- freeze, clip, step, then the state updates of the graph (EMA, queue, centre, clamp)
            frozen = [part for part, until in cfg.freeze.items() if step < until.steps(spe)]
            if frozen:
                freeze_gradients(optimizer, frozen)
            grad_norm = clip_gradients(trainable, *cfg.clip_grad) if cfg.clip_grad else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.update(_merge_updates(outputs), step)
            done = step + 1
            if profiler is not None:
                profiler.step()

            # ---- logging (rank 0), online probe, checkpoint
            now = time.perf_counter()
            step_time, t_last = now - t_last, now
            images_per_s = cfg.batch_size / max(step_time, 1e-9)
            log.progress(done, loss, lr, images_per_s)
            if main and (done % opts.log_every == 0 or done == total):
                scalars = {"loss": loss, "lr": lr, "weight_decay": wd, "epoch": done / spe,
                           "throughput/images_per_s": images_per_s, "throughput/step_s": step_time,
                           "throughput/data_s": data_time}
                scalars.update({f"loss/{t}": float(v) for t, v in zip(objective_terms, sums[1:n_sums])})
                if grad_norm is not None:
                    scalars["grad_norm"] = grad_norm
                if skipped.total:  # distinct files over all ranks, and what each rank met when there are several
                    scalars["data/skipped_samples"] = skipped.total
                    if env.world_size > 1:
                        scalars.update({f"data/skipped_samples/rank{r}": c for r, c in enumerate(per_rank)})
                z = embedding_of(outputs[-1].values, spec)
                if z is not None:
                    scalars.update(collapse_scalars(z))
                log.log(done, scalars)
            data_time = 0.0
            end_of_epoch = done % spe == 0
            if done == total or (opts.probe_every > 0 and done % opts.probe_every == 0) or \
                    (opts.probe_every == 0 and end_of_epoch):
                probe.maybe(log, model, env, done)
            if done == total or (opts.ckpt_every > 0 and done % opts.ckpt_every == 0) or \
                    (opts.ckpt_every == 0 and end_of_epoch):
                written = save_checkpoint(run_dir, model, optimizer, done, spe, env, run_options, opts.keep,
                                          skipped.files)
            t_last = time.perf_counter()  # probes and checkpoints are not step time
    finally:
        if profiler is not None:
            profiler.stop()
        log.close()
    if main:
        print(f"{spec.name}: {total} steps done; run folder {run_dir}", file=sys.stderr)
    return run_dir


def _rank_warning(text: str) -> None:
    """A warning of a rank other than 0 (whose run log prints nothing): straight to its stderr."""
    print(text, file=sys.stderr, flush=True)


def _augment_where(opts: TrainOptions, env: launch.Launch) -> str:
    """``device`` or ``workers``: ``auto`` is ``device`` on an accelerator and ``workers`` on a CPU."""
    if opts.augment not in ("auto", "device", "workers"):
        raise TrainError(f"augment must be 'auto', 'device' or 'workers', got {opts.augment!r}")
    if opts.augment == "auto":
        return "workers" if env.device.type == "cpu" else "device"
    return opts.augment


def _wrap_ddp(model, env: launch.Launch):
    """DDP without re-sending buffers every forward: memories (a 65536x128 queue is 32 MB) stay identical on all
    ranks because their updates gather from every rank. No find_unused_parameters: EMA teachers do not require
    grad and are outside the buckets. torch 2.14 renames the switch ``forward_sync_buffers``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [env.device.index] if env.device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return DDP(model, device_ids=ids, forward_sync_buffers=False)
    return DDP(model, device_ids=ids, broadcast_buffers=False)


def _merge_updates(outputs: list[Output]) -> Output:
    """One ``Output`` for ``model.update`` after accumulation: each update input is the concatenation of the
    micro-batches' along the leading axis (the queue and the centre flatten it into rows anyway)."""
    if len(outputs) == 1:
        return outputs[0]
    last = outputs[-1]
    updates = {block: {name: torch.cat([o.updates[block][name] for o in outputs]) for name in inputs}
               for block, inputs in last.updates.items()}
    return Output(last.loss, last.values, updates)


def _to_device(x, device: torch.device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_to_device(v, device) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _profiler(run_dir: Path, env: launch.Launch):
    """torch.profiler over steps 2-4 (one skipped, one warm-up), traces for TensorBoard's profiler plugin."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=3, repeat=1),
                   on_trace_ready=tensorboard_trace_handler(str(run_dir / "profile"), worker_name=f"rank{env.rank}"),
                   record_shapes=True)
    prof.start()
    return prof


class _OnlineProbe:
    """The weighted kNN probe (k=20, T=0.07) of the embedding block on rank 0, logged as ``probe/knn``."""

    def __init__(self, opts: TrainOptions, data_spec: str, main: bool):
        self.enabled = main and opts.probe_every >= 0
        self.spec, self.n_train, self.n_val = opts.probe_data or data_spec, opts.probe_train, opts.probe_val
        self.data, self.warned = None, 0

    def maybe(self, log: RunLog, model, env: launch.Launch, step: int) -> None:
        if not self.enabled or model.spec.embedding is None:
            return
        from composer.evaluate import embed as probe
        if self.data is None:
            self.data = probe.ProbeData.open(self.spec, self.n_train, self.n_val)
        t0 = time.perf_counter()
        with torch.no_grad():
            acc = probe.run(model, self.data, "knn", env.device)
        for where, cause in list(self.data.skipped.items())[self.warned:]:
            log.message(f"warning: the online probe skipped an unreadable image: {where} ({cause})")
        self.warned = len(self.data.skipped)
        log.log(step, {"probe/knn": acc, "probe/seconds": time.perf_counter() - t0})
        log.message(f"step {step}: kNN probe top-1 {acc:.3f}")
