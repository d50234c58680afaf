"""Memories: state read in forward and written only in ``update`` after the optimizer step."""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.ranges import COUNT, NON_NEGATIVE
from composer.blocks.registry import block
from composer.runtime import collectives
from composer.runtime.schedules import Duration


@block("memory.queue")
class Queue(nn.Module):
    """MoCo's queue of negative keys, a FIFO of the last ``size`` keys from all ranks.

    Read: ``forward()`` → (K, C), the keys as rows (the official code stores C×K and multiplies by it).
    Write: ``update(step, keys=...)`` after the optimizer step: keys (N, C) are gathered from every rank
    without gradient → (G, C), written at the pointer, and the pointer advances by G modulo K
    (moco/builder.py · _dequeue_and_enqueue). Every rank writes the same gathered keys, so the queues stay
    identical without DDP re-broadcasting them. Initialised with random unit vectors.

    Args:
        size: K, the number of keys; must be a multiple of the global batch G (MoCo asserts K % G == 0).
            MoCo v1/v2: 65536.
        dim: C, the key dimension (MoCo: 128).
    """

    def __init__(self, *, size: int = 65536, dim: int = 128):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory.queue: size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.size = size

    def forward(self) -> torch.Tensor:
        return self.queue

    @torch.no_grad()
    def update(self, step: int, *, keys: torch.Tensor) -> None:
        keys = collectives.gather_no_grad(keys.reshape(-1, keys.shape[-1]))
        g = keys.shape[0]
        if self.size % g:
            raise ValueError(f"memory.queue: size {self.size} is not a multiple of the global batch {g} "
                             f"(MoCo requires K % G == 0)")
        ptr = int(self.ptr)
        self.queue[ptr:ptr + g] = keys.to(self.queue.dtype)
        self.ptr.fill_((ptr + g) % self.size)


@block("memory.center")
class Center(nn.Module):
    """DINO's centre of the teacher outputs, an EMA of their batch mean over all ranks.

    Read: ``forward()`` → (1, K), used by the loss in its pre-update value.
    Write: ``update(step, teacher=...)``: C ← m·C + (1 − m)·Σ_rows t / (rows·W), with the row sum all-reduced
    over ranks (main_dino.py · DINOLoss.update_center). ``teacher`` is the raw teacher output (2, N, K).

    Args:
        dim: K, the output dimension of the DINO head (65536 in the paper).
        momentum: centre momentum m (DINO: 0.9).
    """

    def __init__(self, *, dim: int, momentum: float = 0.9):
        super().__init__()
        if dim < 1 or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"memory.center: need dim >= 1 and momentum in [0, 1], got {dim}, {momentum}")
        self.register_buffer("center", torch.zeros(1, dim))
        self.momentum = momentum

    def forward(self) -> torch.Tensor:
        return self.center

    @torch.no_grad()
    def update(self, step: int, *, teacher: torch.Tensor) -> None:
        rows = teacher.reshape(-1, teacher.shape[-1]).float()
        total = collectives.all_reduce_sum(rows.sum(dim=0, keepdim=True))
        batch_center = total / (rows.shape[0] * collectives.world_size())
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)


class FifoRead(NamedTuple):
    rows: Tensor  # (L', D), or (S, L', D) with streams: the stored rows this process reads, newest first
    full: Tensor  # 0-d bool: every row read holds a written key (stays true once true)


@block("memory.fifo")
class Fifo(nn.Module):
    """A first-in first-out memory of past embeddings, newest first: SwAV's queue, or MoCo's.

    Read: ``forward()`` → ``rows`` (L', D), or (S, L', D) with ``streams: S``, and ``full``, a 0-d bool tensor
    that is true once every row read holds a written key. Read with ``!sg`` (the rows carry no gradient).
    Write: ``update(step, keys=...)`` after the optimizer step, from step ``start`` on: keys (N, D), or (S, N, D)
    with ``streams``, are gathered from every process (no gradient); each stream shifts its rows by the batch
    and puts the new keys in front (main_swav.py · train: ``queue[i, bs:] = queue[i, :-bs]``,
    ``queue[i, :bs] = embedding``).

    What a process reads:

    - ``per_rank: false`` (MoCo): every process reads all L rows, the keys of every process (L' = L).
    - ``per_rank: true`` (SwAV): process r reads the L' = L / W rows that hold its own past keys, in the order
      it wrote them. SwAV keeps one queue per process (``queue_length // world_size`` rows each) and feeds it
      with that process's batch only; its Sinkhorn sums marginals over processes, so the codes see every
      process's queue once. The memory stores all W queues, shape (S, W, L/W, D), written from the gathered
      keys: every process holds the same state, so one checkpoint (written by rank 0) resumes every process's
      queue exactly; on one process it is the single queue of SwAV on one GPU.

    ``full`` is SwAV's "use the queue once its last row is non-zero" (``use_the_queue``), kept as a count of
    written rows: a tensor, so a graph switches on it with ``where(full, a, b)`` inside one compiled graph
    (no recompile, no graph break). ``start`` is ``--epoch_queue_starts``: before it the memory is not written
    (SwAV allocates its zero queue at that epoch), so it stays at its initial rows and not full.

    Size: L must be a multiple of the global batch (``ptc check`` compares it with ``train.batch_size``), so
    every step writes whole batches; main_swav.py rounds ``--queue_length`` down to a multiple of
    ``batch_size × world_size``, so the value to write is the rounded one (SwAV bs256: 3840 = 15 × 256).
    With gradient accumulation the micro-batches' keys (merged along the leading axis) are one write.

    Args:
        size: L, the rows over all processes (SwAV ``--queue_length``: 3840 in the bs256 recipe; MoCo 65536).
        dim: D, the key dimension (SwAV ``--feat_dim`` 128; MoCo 128).
        streams: S, independent FIFOs side by side, written from keys (S, N, D) (SwAV: one per assigned crop,
            ``len(crops_for_assign)`` = 2); null: one FIFO, keys (N, D), rows (L', D).
        per_rank: each process reads the FIFO of its own keys (SwAV), else every process reads all keys (MoCo).
        init: ``zeros`` (SwAV's ``torch.zeros``) or ``random`` unit rows (MoCo's ``normalize(randn)``); either
            way ``full`` counts written rows only.
        start: the first optimizer step that writes, in steps (``1000``) or epochs (``15ep``); SwAV
            ``--epoch_queue_starts`` 15 (epochs).
    """

    ranges = {"size": COUNT, "dim": COUNT, "streams": COUNT, "start": NON_NEGATIVE}
    batch_multiple = ("size",)  # ptc check: size % train.batch_size == 0

    def __init__(self, *, size: int, dim: int, streams: int | None = None, per_rank: bool = False,
                 init: Literal["zeros", "random"] = "zeros", start: int | str = 0):
        super().__init__()
        world = collectives.world_size()
        if size < 1 or dim < 1 or (streams is not None and streams < 1):
            raise ValueError(f"memory.fifo: size, dim and streams must be positive, got size={size}, dim={dim}, "
                             f"streams={streams}")
        if init not in ("zeros", "random"):
            raise ValueError(f"memory.fifo: init must be 'zeros' or 'random', got {init!r}")
        try:
            self.start = Duration.parse(start)
        except ValueError as e:
            raise ValueError(f"start: {e}") from None
        if per_rank and size % world:
            raise ValueError(f"memory.fifo: size {size} is not divisible by the {world} processes (per_rank: each "
                             f"holds size / processes rows)")
        self.streams, self.per_rank = streams, per_rank
        self.slots = world if per_rank else 1  # FIFOs per stream: one per process, or one shared
        self.capacity = size // self.slots      # rows one process reads
        shape = (streams or 1, self.slots, self.capacity, dim)
        rows = torch.zeros(shape) if init == "zeros" else F.normalize(torch.randn(shape), dim=-1)
        self.register_buffer("memory", rows)
        self.register_buffer("written", torch.zeros((), dtype=torch.long))  # rows written per FIFO, capped
        self.steps_per_epoch: int | None = None

    def bind_run(self, total_steps: int, steps_per_epoch: int) -> None:
        """Called by ``ComposedModel.bind_schedules``: the epoch length that turns ``start: 15ep`` into steps."""
        self.steps_per_epoch = max(int(steps_per_epoch), 1)

    def start_step(self) -> int:
        if self.start.epochs and self.steps_per_epoch is None:
            raise RuntimeError("memory.fifo: start is in epochs but the run length is unknown; call "
                               "model.bind_schedules(total_steps, steps_per_epoch) before training")
        return int(self.start.steps(self.steps_per_epoch or 1))

    def forward(self) -> FifoRead:
        rows = self.memory[:, collectives.rank() if self.per_rank else 0]  # (S, L', D)
        return FifoRead(rows if self.streams is not None else rows[0], self.written >= self.capacity)

    @torch.no_grad()
    def update(self, step: int, *, keys: Tensor) -> None:
        if step < self.start_step():
            return
        keys = self._streams_first(keys)                                    # (S, n, D)
        every = collectives.gather_no_grad(keys.unsqueeze(0))               # (W, S, n, D), rank order
        w, s, n, d = every.shape
        if self.per_rank:
            new = every.transpose(0, 1)                                     # (S, W, n, D): rank r's keys in slot r
        else:
            new = every.transpose(0, 1).reshape(s, 1, w * n, d)            # (S, 1, W·n, D), like MoCo's gather
        m = new.shape[2]
        if self.capacity % m:
            raise ValueError(f"memory.fifo: size {self.capacity * self.slots} is not a multiple of the global "
                             f"batch {w * n} (SwAV rounds --queue_length down to one; MoCo asserts K % batch == 0)")
        self.memory.copy_(torch.cat([new.to(self.memory.dtype), self.memory[:, :, :self.capacity - m]], dim=2))
        self.written.add_(m).clamp_(max=self.capacity)

    @staticmethod
    def update_equations(c) -> list[tuple[str, str]]:
        """``ptc explain``'s lines for the write (``c`` is composer.draw.equations.Ctx)."""
        keys, me, size = c.arg("keys"), c.block, c.p("size")
        n, dim = c.d("keys", -2, "N"), c.d("keys", -1, "D")
        streams = c.p("streams") != "None"
        s = "s, " if streams else ""
        lines = [(f"k = gather({keys})   (every process's keys, no gradient; from step {c.p('start')} on)",
                  f"W x {'S x ' if streams else ''}{n} x {dim}")]
        if c.p("per_rank") == "True":
            lines.append((f"{me}[{s}r] ← cat(k[r{', s' if streams else ''}], {me}[{s}r])[: {size}/W]   for each "
                          f"process r (newest first); process r reads {me}[{s}r]", f"{size}/W rows each"))
        else:
            lines.append((f"{me}{'[s]' if streams else ''} ← cat(k (W·{n} rows), {me}{'[s]' if streams else ''})"
                          f"[: {size}]   (newest first, read by every process)", f"{size} rows"))
        lines.append((f"{me}.full ← every row read holds a written key", "scalar"))
        return lines

    def _streams_first(self, keys: Tensor) -> Tensor:
        """keys as (S, n, D); (k·S, n, D) from k accumulated micro-batches becomes (S, k·n, D)."""
        if self.streams is None:
            return keys.reshape(1, -1, keys.shape[-1])
        s = self.streams
        if keys.ndim != 3 or keys.shape[0] % s:
            raise ValueError(f"memory.fifo: keys must be (streams={s}, N, D), got {tuple(keys.shape)}")
        k = keys.shape[0] // s
        return keys.reshape(k, s, *keys.shape[1:]).transpose(0, 1).reshape(s, -1, keys.shape[-1])
