"""Unreadable images among good ones: one line naming the file, skipped in training with a warning and a count
(also when DataLoader workers decode them), and a stop naming the files past --max-bad-samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_helpers import one_error_line
from PIL import Image
from train_helpers import MOCO, ptc

from composer.data import ImageFolderDataset, read_image
from composer.data.faults import SampleError, first_readable


def _folder(root: Path, n: int = 16) -> tuple[list[Path], list[Path]]:
    """``n`` 32x32 PNGs in two classes, two of them damaged (one truncated, one not an image at all)."""
    files = []
    for i in range(n):
        path = root / ("a" if i % 2 else "b") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        files.append(path)
    truncated, junk = files[3], files[10]
    truncated.write_bytes(truncated.read_bytes()[:200])
    junk.write_bytes(b"this is not an image\n")
    return [truncated, junk], [f for f in files if f not in (truncated, junk)]


def test_a_damaged_image_is_one_line_naming_it(tmp_path):
    bad, good = _folder(tmp_path)
    for path in bad:
        with pytest.raises(SampleError) as info:
            read_image(path)
        assert str(info.value).startswith(f"{path}: cannot read this image (") and "\n" not in str(info.value)
    assert read_image(good[0]).shape == (3, 32, 32)


def test_first_readable_stands_in_the_next_good_sample(tmp_path):
    bad, _ = _folder(tmp_path)
    data = ImageFolderDataset(tmp_path)
    paths = [Path(p) for p, _ in data.folder.samples]
    i = paths.index(bad[0])
    sample, skipped = first_readable(data, i, limit=3)
    assert torch.equal(sample["image"], read_image(paths[i + 1])) and [w for w, _ in skipped] == [str(bad[0])]
    assert first_readable(data, i + 1, limit=3)[1] == ()
    assert first_readable(data, i, limit=0) == (None, skipped)          # nothing tried past the limit


def _train(root: Path, out: Path, *extra: str):
    # 16 images, batch 8: two steps an epoch, every image (both damaged ones included) in every epoch
    return ptc("train", MOCO, "--set", "train.batch_size=8", "--steps", "4", "--data", f"folder:{root}",
               "--out", out, "--threads", "1", "--device", "cpu", "--no-progress", "--probe-every", "-1", *extra)


def test_training_skips_damaged_images_counts_them_and_stops_past_the_limit(tmp_path):
    bad, _ = _folder(tmp_path / "images")
    done = _train(tmp_path / "images", tmp_path / "run", "--workers", "2", "--max-bad-samples", "2",
                  "--probe-every", "2", "--probe-train", "16", "--probe-val", "16")   # the probe reads them too
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("warning: skipped an unreadable sample")]
    assert len(warnings) == 2 and all(any(str(p) in w for w in warnings) for p in bad)   # once each, 2 epochs
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    assert losses[-1]["data/skipped_samples"] == 2          # counted in the main process, met in the workers
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "probe/knn" in r] == [0, 2, 4]
    probe_warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("warning: the online probe skipped")]
    assert len(probe_warnings) == 2 and all(any(str(p) in w for w in probe_warnings) for p in bad)

    stopped = _train(tmp_path / "images", tmp_path / "strict", "--workers", "0", "--max-bad-samples", "1")
    assert stopped.returncode == 2
    line = one_error_line(stopped.stderr)
    assert "2 unreadable samples, more than --max-bad-samples 1" in line
    assert all(str(p) in line for p in bad)


def _two_rank_runs(rank: int, world_size: int, root: str) -> None:
    """Rank ``rank`` of: a run that skips the two damaged images, then one that must stop at its limit of 1."""
    import composer
    from composer.train import train
    from composer.train.batches import TooManyBadSamples
    from train_helpers import fast
    folder = f"folder:{root}/images"
    spec = composer.load(MOCO, {"train.batch_size": 8, "train.steps": 4})
    train(spec, fast(f"{root}/run", data=folder, max_bad_samples=2))
    try:  # every rank must stop at the same step; one stopping alone would leave the other in a collective
        train(spec, fast(f"{root}/strict", data=folder, max_bad_samples=1))
    except TooManyBadSamples as e:
        Path(f"{root}/stop-{rank}.txt").write_text(str(e))


@pytest.mark.dist
def test_two_ranks_log_each_ranks_skipped_count_and_the_total_and_stop_together(tmp_path):
    from dist_helpers import spawn

    from composer.train import checkpoint
    bad, _ = _folder(tmp_path / "images")
    spawn(_two_rank_runs, 2, str(tmp_path))
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r][-1]
    # 16 images, 8 a step over 2 ranks: each epoch reads every image once, a reshuffled epoch on the other rank
    per_rank = [last["data/skipped_samples/rank0"], last["data/skipped_samples/rank1"]]
    assert last["data/skipped_samples"] == 2 and 2 <= sum(per_rank) <= 4, last  # the total: distinct files
    state = checkpoint.load(sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1])
    assert [len(files) for files in state["skipped_by_rank"]] == per_rank
    assert set(state["skipped_samples"]) == {str(p) for p in bad}
    stops = [(tmp_path / f"stop-{r}.txt").read_text() for r in range(2)]
    assert stops[0] == stops[1] and "2 unreadable samples (met per rank: rank 0 " in stops[0], stops
    assert all(str(p) in stops[0] for p in bad)
