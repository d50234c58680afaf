"""Data loading against the training step, and 2 processes against 1 (tools/bench.py section ``data``).

    python tools/bench_data.py            # prints the measurements and their ratios

Reported (each as seconds and as a ratio, since machines here are shared and noisy):
- load: images/s of the training DataLoader (collate + the graph's data stage, seeded per batch) with 0 and
  2 workers, against images/s of the training step alone (forward, backward, optimizer, state updates) on a
  ready batch. A ratio data/step above 1 means loading keeps up with training.
- dist: the median step time of ``composer.train.train`` on 2 gloo processes against 1 process, for the same
  global batch (the same optimizer steps); ideal scaling on 2 free cores is 0.5, and gloo all-reduce,
  gathers and a 2-core machine shared with the data stage push it up.
"""
from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import composer  # noqa: E402
from composer.data.spec import open_dataset  # noqa: E402
from composer.graph.train_section import parse_train  # noqa: E402
from composer.train import TrainOptions, train  # noqa: E402
from composer.train.batches import make_loader  # noqa: E402
from composer.train.optim import build_optimizer, set_hyperparameters  # noqa: E402
from composer.train.runlog import read_metrics  # noqa: E402

GRAPH, VARIANT = str(ROOT / "graphs/simclr.yaml"), "tiny"
DATA = "shapes:n=1024,size=32"


def _print(name: str, value: float, unit: str = "") -> None:
    print(f"data: {name}: {value:.4g}{(' ' + unit) if unit else ''}")


def bench_data(report=_print, graph: str = GRAPH, variant: str | None = VARIANT, data: str = DATA,
               batch_size: int = 64, batches: int = 8, steps: int = 8) -> dict[str, float]:
    """Measure and ``report(name, value, unit)`` each figure; returns them by name."""
    results: dict[str, float] = {}

    def put(name: str, value: float, unit: str = "") -> None:
        results[name] = value
        report(name, value, unit)

    spec = composer.load(graph, {"train.batch_size": batch_size}, variant)
    torch.manual_seed(0)
    model = composer.build(spec, check=False)
    dataset = open_dataset(data, "train")
    threads = torch.get_num_threads()

    # ---- the data pipeline alone
    for workers in (0, 2):
        loader, _ = make_loader(dataset, model.data_stage, model.model_inputs, batch_size=batch_size, accumulate=1,
                                world_size=1, rank=0, seed=0, start_step=0, total_steps=batches + 1,
                                num_workers=workers)
        it = iter(loader)
        next(it)  # workers started, first batch in
        t = time.perf_counter()
        for _ in range(batches):
            _, batch, _ = next(it)
        dt = time.perf_counter() - t
        del it
        put(f"load images/s, {workers} workers", batches * batch_size / dt, "img/s")

    # ---- the training step alone, on a ready batch
    torch.set_num_threads(threads)
    cfg = parse_train(spec)
    model.bind_schedules(1000, 10)
    optimizer = build_optimizer(model, cfg)
    set_hyperparameters(optimizer, 0.01, 0.0)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update(out, i)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[2:])
    put("step images/s", batch_size / step, "img/s")
    for workers in (0, 2):
        put(f"ratio data/step, {workers} workers", results[f"load images/s, {workers} workers"] * step / batch_size)

    # ---- 2 processes against 1, same global batch
    with tempfile.TemporaryDirectory() as tmp:
        one = _run_steps(graph, variant, data, batch_size, steps, Path(tmp) / "w1", world_size=1)
        two = _run_steps(graph, variant, data, batch_size, steps, Path(tmp) / "w2", world_size=2)
    put("step s, 1 process", one, "s")
    put("step s, 2 processes", two, "s")
    put("ratio 2-process/1-process step time", two / one)
    return results


def _options(out: Path, data: str, threads: int) -> TrainOptions:
    return TrainOptions(data=data, out=str(out), workers=0, threads=threads, probe_every=-1, progress=False,
                        tensorboard=False, check=False, ckpt_every=10**9)


def _median_step(out: Path) -> float:
    rows = [m for m in read_metrics(out) if "throughput/step_s" in m][2:]  # skip warm-up steps
    return statistics.median(m["throughput/step_s"] for m in rows)


def _run_steps(graph, variant, data, batch_size, steps, out: Path, world_size: int) -> float:
    overrides = {"train.batch_size": batch_size, "train.epochs": None, "train.steps": steps + 2}
    if world_size == 1:
        train(composer.load(graph, overrides, variant), _options(out, data, threads=2))
    else:
        import torch.multiprocessing as mp
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_worker, args=(world_size, port, graph, variant, overrides, data, str(out)), nprocs=world_size)
    return _median_step(out)


def _worker(rank, world_size, port, graph, variant, overrides, data, out) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        train(composer.load(graph, overrides, variant), _options(Path(out), data, threads=1))
    finally:
        dist.destroy_process_group()


def main() -> None:
    bench_data()


if __name__ == "__main__":
    main()
