"""Start a few CPU processes with the gloo backend, for tests of distributed behaviour.

``spawn(worker, world_size, *args)`` runs ``worker(rank, world_size, *args)`` in ``world_size`` fresh processes
(``torch.multiprocessing.spawn``) after ``init_process_group("gloo")`` on 127.0.0.1 and a free port, and tears the
group down afterwards. ``worker`` must be a module-level function (it is pickled by reference). A failing worker
raises in the parent with the worker's traceback. Spawning costs seconds: run many checks per spawn.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, worker, args) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn(worker, world_size: int, *args) -> None:
    """Run ``worker(rank, world_size, *args)`` on ``world_size`` gloo processes and wait for all of them."""
    mp.spawn(_entry, args=(world_size, free_port(), worker, args), nprocs=world_size, join=True)


def sgd_record(model, forward_model, batch_at, steps: int, extra=None, lr: float = 0.5) -> list[dict]:
    """``steps`` iterations of forward, backward, SGD (``lr``) and the graph's state update.

    ``forward_model``: the model or its DDP wrapper; ``batch_at(step)``: that step's model-stage inputs;
    ``extra(output)``: more values to record. Returns one dict per iteration (``loss``, ``grads`` and the
    extras), then ``{"state": ...}`` with the final state dict."""
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=lr)
    record = []
    for step in range(steps):
        out = forward_model(batch_at(step))
        out.loss.backward()
        record.append({"loss": out.loss.detach().clone(), **(extra(out) if extra else {}),
                       "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update(out, step)
    record.append({"state": {k: v.clone() for k, v in model.state_dict().items()}})
    return record
