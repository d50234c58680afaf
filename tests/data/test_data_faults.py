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
