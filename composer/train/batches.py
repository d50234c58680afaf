"""Training batches: a resumable, distributed sampler and a collate function that runs the data stage.

Order. Epoch ``e`` visits a permutation of the dataset drawn from ``(seed, e)``; it is cut into global batches
of ``batch_size`` (the last partial batch is dropped), and global batch ``k`` is cut into ``accumulate × W``
micro-batches of ``b`` images: micro-batch ``j`` of rank ``r`` is images ``[(j·W + r)·b, (j·W + r + 1)·b)``.
So W processes with ``b`` images each see exactly the rows one process with ``W·b`` images sees, in rank order
(the order in which gathers concatenate them). Resuming at step ``s`` starts the sampler at
``(epoch, k) = divmod(s, steps_per_epoch)``: no batch is skipped or repeated.

Randomness. The data stage (augmentations, maskers) draws from torch's, NumPy's and Python's global generators.
The collate function seeds all three from ``(seed, epoch, k, j, rank)`` before running it, so every batch is a
pure function of its position, whatever worker builds it and however the run was interrupted. In the main
process (``num_workers=0``) the generators are forked, so the model's own random stream is left untouched.

Unreadable samples. A file that cannot be decoded is replaced by the next readable sample of the dataset
(``composer.data.faults``), so batches keep their size on every rank; the files passed over travel with the
batch as ``(file, cause)`` pairs, and the trainer counts them in its own process (``SkippedSamples``), whichever
worker met them, and stops past ``--max-bad-samples``.

Where the augmentations run (``ptc train --augment``). ``workers``: the whole data stage runs per sample in
the DataLoader workers (the reference path). ``device``: the workers only collate the raw uint8 batch (small to
transfer), and ``DeviceStage`` runs the data stage in the training process on the training device, with the
augment blocks switched to their batched path (``composer.blocks.augment_batched``). It is seeded from the same
``(seed, epoch, k, j, rank)`` key, so a resumed run draws the same augmentations as an uninterrupted one, on
one process or many.

Threads. Tiny-image augmentations are 25-100x slower with 2 threads than with 1 on small CPUs (thread start-up
dominates), so the data stage always runs single-threaded: in workers for good, in the main process around
the call.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from composer.data.collate import collate
from composer.data.faults import first_readable
from composer.runtime.errors import UserError
from composer.data.folders import decode_images


class RunSampler(Sampler):
    """Yields this rank's micro-batches for global steps ``start_step … total_steps − 1``.

    Each item is a list of ``(tag, index)`` pairs, ``tag = (epoch, k, j)``: the epoch, the step within it and
    the micro-batch within the step.
    """

    def __init__(self, n: int, batch_size: int, accumulate: int, world_size: int, rank: int, seed: int,
                 start_step: int, total_steps: int):
        if batch_size % (accumulate * world_size):
            raise ValueError(f"batch_size {batch_size} is not divisible by accumulate {accumulate} x "
                             f"{world_size} process(es)")
        self.n, self.batch_size, self.accumulate = n, batch_size, accumulate
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.micro = batch_size // (accumulate * world_size)
        self.steps_per_epoch = steps_per_epoch(n, batch_size)
        self.start_step, self.total_steps = start_step, total_steps

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.accumulate

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self):
        perm, perm_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = self.permutation(epoch), epoch
            batch = perm[k * self.batch_size:(k + 1) * self.batch_size]
            for j in range(self.accumulate):
                start = (j * self.world_size + self.rank) * self.micro
                tag = (epoch, k, j)
                yield [(tag, int(i)) for i in batch[start:start + self.micro]]


def steps_per_epoch(n: int, batch_size: int) -> int:
    if n < batch_size:
        raise ValueError(f"the dataset has {n} samples, fewer than one batch of {batch_size}")
    return n // batch_size


class Tagged(Dataset):
    """``dataset[(tag, index)]`` → ``(tag, sample, skipped)``: carries the batch position to the collate function.

    An unreadable sample is replaced by the next readable one (``composer.data.faults.first_readable``, at most
    ``max_bad`` tried past it); ``skipped`` lists ``(file, cause)`` of those passed over, so the main process can
    count them whichever worker met them.
    """

    def __init__(self, dataset: Dataset, max_bad: int = 0):
        self.dataset, self.max_bad = dataset, max_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        tag, index = item
        sample, skipped = first_readable(self.dataset, index, self.max_bad)
        return tag, sample, skipped


class TooManyBadSamples(UserError):
    """More unreadable samples than the user allows (``--max-bad-samples``)."""


class SkippedSamples:
    """The unreadable samples this process (rank) met: each warned about once and counted; ``check`` stops the
    run once the count summed over ranks passes ``limit``.

    ``files`` (``file: cause``, in the order met) goes into checkpoints, so a resumed run keeps counting. The
    limit is checked on counts every rank has (``check`` after the step's all-reduce), so all ranks stop at the
    same step: a rank that stopped alone would leave the others waiting in the next collective.
    """

    def __init__(self, limit: int, warn, files: dict[str, str] | None = None, rank: int = 0, world_size: int = 1):
        self.limit, self.warn, self.files = limit, warn, dict(files or {})
        self.where = f" (rank {rank})" if world_size > 1 else ""
        self.counts: list[int] | None = None  # every rank's count at the last check
        self.everyone: dict[str, None] = dict.fromkeys(self.files)  # distinct files over all ranks

    def add(self, skipped, batch_missing: bool = False) -> None:
        """Count ``skipped`` (``(file, cause)`` pairs), warning once about each new file; stop when
        ``batch_missing`` (no readable sample could stand in: every sample of a small dataset is unreadable)."""
        for where, cause in skipped:
            if where not in self.files:
                self.files[where] = cause
                self.warn(f"warning: skipped an unreadable sample{self.where}: {where} ({cause}); "
                          f"{len(self.files)} so far{' on this rank' if self.where else ''}, "
                          f"at most {self.limit} allowed (--max-bad-samples)")
        if batch_missing:
            raise TooManyBadSamples(f"{len(self.files)} unreadable samples, and no readable one within "
                                    f"--max-bad-samples {self.limit}: {self._names(list(self.files))}; repair or "
                                    f"remove them, or raise --max-bad-samples")

    def check(self, per_rank: list[int], gather=lambda files: [files]) -> None:
        """Stop once more than ``limit`` distinct files are unreadable over all ranks. ``per_rank`` holds every
        rank's count (the same list on all ranks, from the step's all-reduce); when it changes, ``gather``
        (``launch.gather_objects``, called by all ranks together) collects the names, because a reshuffled epoch
        hands the same bad file to another rank and the total counts it once."""
        if per_rank != self.counts:
            self.counts = list(per_rank)
            self.everyone = dict.fromkeys(n for files in gather(list(self.files)) for n in files)
        if len(self.everyone) <= self.limit:
            return
        met = f" (met per rank: {', '.join(f'rank {r} {c}' for r, c in enumerate(per_rank))})" \
            if len(per_rank) > 1 else ""
        raise TooManyBadSamples(f"{len(self.everyone)} unreadable samples{met}, more than --max-bad-samples "
                                f"{self.limit}: {self._names(list(self.everyone))}; repair or remove them, or raise "
                                f"--max-bad-samples")

    @property
    def total(self) -> int:
        """Distinct unreadable files over all ranks, as of the last ``check``."""
        return len(self.everyone)

    @staticmethod
    def _names(names: list[str]) -> str:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        return ", ".join(names[:5]) + more

    def __len__(self) -> int:
        return len(self.files)


@contextlib.contextmanager
def seeded(key: tuple[int, ...], fork: bool):
    """Seed torch, NumPy and ``random`` from ``key``; with ``fork``, restore their states (and the thread
    count) afterwards. Always runs the body with one intra-op thread."""
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate(), torch.get_num_threads()) \
        if fork else None
    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if state is not None:
            torch.set_rng_state(state[0])
            np.random.set_state(state[1])
            random.setstate(state[2])
            if state[3] != 1:
                torch.set_num_threads(state[3])


class StageCollate:
    """``collate`` then the graph's data stage, seeded from ``(seed, epoch, k, j, rank)``.

    Returns ``(tag, batch, skipped)`` with ``batch`` the data stage's dict restricted to ``keep`` (the model
    inputs, and ``label`` when present, for logging), so unused raw fields do not cross process boundaries, and
    ``skipped`` the ``(file, cause)`` of the unreadable samples replaced in it (``batch`` is None when one could
    not be replaced).
    """

    def __init__(self, data_stage, seed: int, rank: int, keep: list[str], in_worker: bool):
        self.data_stage, self.seed, self.rank = data_stage, seed, rank
        self.keep, self.in_worker = list(keep), in_worker

    def __call__(self, items):
        tag = items[0][0]
        skipped = tuple(s for _, _, sk in items for s in sk)
        samples = [sample for _, sample, _ in items]
        if any(sample is None for sample in samples):  # nothing readable within max_bad: the trainer stops
            return tag, None, skipped
        raw = collate(samples)
        if "encoded" in raw and self.data_stage is not raw_batch:  # decode=device with per-sample augmentation
            raw["image"] = _as_batch(decode_images(raw.pop("encoded")))
        with seeded((self.seed, *tag, self.rank), fork=not self.in_worker), torch.no_grad():
            out = self.data_stage(raw)
        return tag, {k: out[k] for k in self.keep if k in out}, skipped


def raw_batch(batch: dict) -> dict:
    """The data stage of the ``device`` placement's workers: the collated raw batch, unchanged."""
    return batch


class DeviceStage:
    """The data stage in the training process, on the batch's device, batched where the blocks allow.

    ``raw_keys``: what the workers must send (the data stage's inputs, plus ``label`` for logging);
    ``status``: ``{augment block: None if batched, else why it stays per sample}``.
    """

    def __init__(self, data_stage, keep: list[str], seed: int, rank: int):
        self.data_stage, self.keep, self.seed, self.rank = data_stage, list(keep), seed, rank
        self.status = data_stage.use_batched(True)
        self.raw_keys = list(dict.fromkeys([*data_stage.inputs, "label", "encoded"]))

    def __call__(self, tag: tuple[int, ...], raw: dict, device: torch.device | str = "cpu") -> dict:
        """The data stage's outputs for the raw CPU batch at position ``tag``, computed on ``device``."""
        raw = {k: _move(v, device) for k, v in raw.items() if k != "encoded"} | \
            ({"image": _as_batch(decode_images(raw["encoded"], device))} if "encoded" in raw else {})
        with seeded((self.seed, *tag, self.rank), fork=True), torch.no_grad():
            out = self.data_stage(raw)
        return {k: out[k] for k in self.keep if k in out}


def _move(value, device):
    """A tensor, or a list of tensors (images of different sizes), on ``device``; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [v.to(device, non_blocking=True) for v in value]
    return value


def _as_batch(images: list[torch.Tensor]):
    """(B, 3, H, W) when the decoded images share a size, else the list (the convention of ``collate``)."""
    same = all(img.shape == images[0].shape for img in images)
    return torch.stack(images) if same else images


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, data_stage, keep: list[str], *, batch_size: int, accumulate: int,
                world_size: int, rank: int, seed: int, start_step: int, total_steps: int,
                num_workers: int, pin_memory: bool = False, max_bad: int = 0) -> tuple[DataLoader, RunSampler]:
    """The DataLoader of one run (all epochs), starting at ``start_step``; ``max_bad``: unreadable samples that
    may be replaced by readable ones (see ``Tagged``)."""
    sampler = RunSampler(len(dataset), batch_size, accumulate, world_size, rank, seed, start_step, total_steps)
    loader = DataLoader(
        Tagged(dataset, max_bad), batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        collate_fn=StageCollate(data_stage, seed, rank, keep, in_worker=num_workers > 0),
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None, persistent_workers=False,
        # its own generator: starting an iterator must not draw from the global stream, whose state a resumed
        # run restores from the checkpoint (the batches' randomness is seeded per batch anyway)
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler
