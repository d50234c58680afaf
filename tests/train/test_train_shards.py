"""Training on WebDataset shards written by ``ptc shards``: exactly once per epoch on 2 gloo ranks with DataLoader
workers, the same samples after a SIGKILL and a resume, and damaged shards survived."""
from __future__ import annotations

import tarfile
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_helpers import spawn
from fault_helpers import replace_member
from train_helpers import MOCO, kill_during_run, losses, ptc

from composer.data.shapes import ShapesDataset
from composer.data.shards import ShardDataset, pattern_of, write_shards
from composer.train.batches import make_loader, steps_per_epoch

N, BATCH = 70, 8


def _damaged_shards(folder: Path) -> tuple[str, list[int], dict[int, int]]:
    """70 samples whose label is their number, in 7 shards; shard 2 cut inside sample 24's image, sample 51's
    image replaced by junk. Returns the pattern, the indexed sample numbers and {junk: stand-in}."""
    shapes = ShapesDataset(n=N, size=16, seed=1)
    paths = write_shards(({**shapes[i], "label": i} for i in range(N)), folder, maxcount=10)
    with tarfile.open(paths[2]) as tar:
        cut = next(m for m in tar.getmembers() if m.name.startswith("000000024."))
    paths[2].write_bytes(paths[2].read_bytes()[:cut.offset_data + 10])
    replace_member(paths[5], "000000051.png", b"\x89PNG broken")
    kept = [*range(24), *range(30, N)]
    return pattern_of(paths), kept, {51: 52}


def _identity(raw: dict) -> dict:
    return raw


def _epochs(rank: int, world: int, pattern: str, out: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the damage warnings: counted by the test below
        data = ShardDataset(pattern)
    spe = steps_per_epoch(len(data), BATCH)
    seen = []
    for start in (0, 5):  # the whole run, then a run resumed at step 5 (mid-epoch 0)
        loader, _ = make_loader(data, _identity, ["label"], batch_size=BATCH, accumulate=1, world_size=world,
                                rank=rank, seed=4, start_step=start, total_steps=2 * spe, num_workers=2)
        seen.append([(tag, batch["label"].tolist()) for tag, batch, _skipped in loader])
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        torch.save(gathered, out)


@pytest.mark.dist
def test_two_ranks_see_each_sample_once_per_epoch_and_resume_at_the_same_sample(tmp_path):
    pattern, kept, stand_in = _damaged_shards(tmp_path / "shards")
    spawn(_epochs, 2, pattern, str(tmp_path / "seen.pt"))
    ranks = torch.load(tmp_path / "seen.pt")
    spe = len(kept) // BATCH  # 64 samples indexed: 8 steps of 8 per epoch, nothing dropped
    assert len(kept) == 64
    want = Counter(stand_in.get(i, i) for i in kept)  # the junk image's slot holds its stand-in
    for epoch in range(2):
        got = Counter(label for run in ranks for tag, labels in run[0] if tag[0] == epoch for label in labels)
        assert got == want, epoch
    for full, resumed in (run for run in ranks):  # per rank: the resumed run is the tail of the whole one
        assert resumed == full[5:] and len(full) == 2 * spe
    first = [labels for tag, labels in ranks[0][0] if tag[0] == 0]
    second = [labels for tag, labels in ranks[0][0] if tag[0] == 1]
    assert first != second  # each epoch its own order


def _cli(out, data, workers: int) -> list[str]:
    return ["train", MOCO, "--set", "train.batch_size=8", "--set", "train.lr=0.05", "--steps", "40", "--data", data,
            "--out", str(out), "--ckpt-every", "5", "--workers", str(workers), "--threads", "1", "--device", "cpu",
            "--no-progress", "--probe-every", "-1"]


def test_sigkill_then_resume_on_damaged_shards_reproduces_the_run(tmp_path):
    pattern, _, _ = _damaged_shards(tmp_path / "shards")
    data = f"wds:{pattern}"
    reference = ptc(*_cli(tmp_path / "reference", data, workers=0))
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert reference.stderr.count("wds: skipped") >= 2  # the cut shard and the junk image, warned, not fatal

    killed = tmp_path / "killed"
    kill_during_run(killed, _cli(killed, data, workers=2), 12, tmp_path / "stderr.txt")
    assert 12 <= losses(killed)[-1][0] < 40
    done = ptc(*_cli(killed, data, workers=0), "--resume")
    assert done.returncode == 0 and "resumed from" in done.stderr, done.stderr[-2000:]
    got, want = losses(killed), losses(tmp_path / "reference")
    assert [s for s, _ in got] == list(range(1, 41))
    assert torch.allclose(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]), rtol=1e-5, atol=1e-6)
