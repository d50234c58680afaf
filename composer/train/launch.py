"""Process setup: the process group from torchrun's environment, the device, and the seeds.

``torchrun --nproc_per_node N -m composer train G`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` (multi-node through its rendezvous); ``init`` joins that group with
``nccl`` on GPUs and ``gloo`` on CPUs. A group that already exists (tests that spawn processes themselves) is
used as is and left open.

Seeds: every rank builds the model from the same seed (identical initialisation; DDP with
``broadcast_buffers=False`` does not re-send buffers such as a queue's random start), then seeds its own
stream with ``seed + rank`` for what differs per process (dropout, drop-path). Data-stage randomness is
seeded per batch elsewhere (``composer.train.batches``).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist


@dataclasses.dataclass
class Launch:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # whether ``close`` should destroy the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def restarted(self) -> bool:
        """True in a worker that torchrun restarted after a failure (``--max-restarts``)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def init(device: str = "auto") -> Launch:
    """Join the torchrun process group (if any) and choose the device.

    Args:
        device: ``auto`` (the local GPU when CUDA is available, else the CPU), ``cpu``, ``cuda`` or ``cuda:K``.
    """
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if want_cuda else "gloo"
        timeout = datetime.timedelta(minutes=30)
        store = _attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local_rank = int(os.environ.get("LOCAL_RANK", rank if world > 1 else 0))
    if want_cuda:
        index = int(device.split(":")[1]) if ":" in device else local_rank % max(torch.cuda.device_count(), 1)
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return Launch(rank, world, local_rank, dev, owns)


def _attempt_store(timeout: datetime.timedelta):
    """Under torchrun's agent store, a key space of our own per restart attempt; None elsewhere.

    torch 2.14's elastic agent keeps one TCPStore server for all rendezvous rounds and ``env://`` adds no
    per-attempt prefix, so after ``--max-restarts`` relaunches the workers a restarted rank can read the
    address its peer published in the previous attempt and fail with "Connection refused" (reproduced with a
    plain all_reduce script). Prefixing the keys with the restart count keeps the attempts apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                         int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"composer/attempt_{attempt}", base)


def close(launch: Launch) -> None:
    if launch.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def choose_threads(requested: int, workers: int) -> int:
    """The intra-op thread count for this process: ``requested`` if positive; else ``OMP_NUM_THREADS`` if set
    (torchrun sets 1 per process); else the cores left to this process after its DataLoader workers, at least 1.

    Oversubscribing a small CPU is very costly: on 2 busy cores a 2-thread step of a tiny model was measured
    40x slower than a 1-thread step (OpenMP threads spin while they wait for each other).
    """
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // local - workers)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's ``obj`` on every rank (a list in rank order); ``[obj]`` on one process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
