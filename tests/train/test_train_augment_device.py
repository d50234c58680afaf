"""``--augment device``: workers send raw uint8 batches, the data stage runs batched in the training process,
seeded per (seed, epoch, step, micro-batch, rank), so a resumed run draws the augmentations of an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_helpers import spawn
from train_helpers import DATA, MOCO, fast, final_model, losses

import composer
from composer.data.spec import open_dataset
from composer.train import checkpoint, train
from composer.train.batches import DeviceStage, make_loader, raw_batch

OVERRIDES = {"train.batch_size": 8, "train.steps": 12, "train.lr": 0.05,
             "blocks.encoder.model_args": "{drop_path_rate: 0.2}"}


def _device_batches(model, start: int, total: int, workers: int) -> list[dict]:
    stage = DeviceStage(model.data_stage, model.model_inputs, seed=3, rank=0)
    assert stage.status == {"aug": None}  # MoCo v2's recipe runs batched
    loader, _ = make_loader(open_dataset(DATA, "train"), raw_batch, stage.raw_keys, batch_size=8, accumulate=1,
                            world_size=1, rank=0, seed=3, start_step=start, total_steps=total, num_workers=workers)
    return [stage(tag, raw) for tag, raw, _skipped in loader]


def test_device_stage_batch_depends_only_on_its_position():
    model = composer.build(composer.load(MOCO))
    whole = _device_batches(model, 0, 4, workers=0)
    tail = _device_batches(model, 2, 4, workers=2)  # a resumed loader, built by worker processes
    assert [tuple(b["x_q"].shape) for b in whole] == [(8, 3, 16, 16)] * 4
    for a, b in zip(whole[2:], tail):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(whole[2]["x_q"], whole[2]["x_k"])  # two independent draws of the recipe
    assert not torch.equal(whole[2]["x_q"], whole[3]["x_q"])


def test_resume_continues_the_device_augmentation_stream(tmp_path):
    """A run resumed from its step-4 checkpoint (as after a kill) reproduces the uninterrupted run's losses."""
    reference = tmp_path / "reference"
    train(composer.load(MOCO, OVERRIDES), fast(reference, ckpt_every=4, keep=3, augment="device"))
    resumed = tmp_path / "resumed"
    train(composer.load(MOCO, OVERRIDES), fast(resumed, resume=str(checkpoint.path_for(reference, 4)),
                                               augment="device"))
    assert [s for s, _ in losses(resumed)] == list(range(5, 13))
    _assert_continues(resumed, reference, resumed_from=4)


def _assert_continues(resumed, reference, resumed_from: int) -> None:
    """The resumed run's losses are the reference run's after step ``resumed_from``; the final weights agree."""
    got, want = losses(resumed), losses(reference)
    assert torch.allclose(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want[resumed_from:]]),
                          rtol=1e-5, atol=1e-6)
    a, b = final_model(resumed), final_model(reference)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5) for k in a)


def test_ranks_draw_different_augmentations():
    """Per-rank seeding: rank 1's micro-batch is not rank 0's augmentation stream (same position, same images)."""
    model = composer.build(composer.load(MOCO))
    raw = {"image": torch.stack([open_dataset(DATA, "train")[i]["image"] for i in range(4)])}
    a, b = (DeviceStage(model.data_stage, model.model_inputs, seed=3, rank=r)((0, 2, 0), raw) for r in (0, 1))
    again = DeviceStage(model.data_stage, model.model_inputs, seed=3, rank=1)((0, 2, 0), raw)
    assert torch.equal(b["x_q"], again["x_q"]) and not torch.equal(a["x_q"], b["x_q"])


def _reference_then_resumed(rank: int, world_size: int, root: str) -> None:
    """On every rank: the uninterrupted run (checkpoints every 3 steps), then a run resumed from its step 3."""
    reference, overrides = Path(root) / "reference", {**OVERRIDES, "train.steps": 6}
    train(composer.load(MOCO, overrides), fast(reference, ckpt_every=3, keep=3, augment="device"))
    train(composer.load(MOCO, overrides), fast(Path(root) / "resumed", augment="device",
                                               resume=str(checkpoint.path_for(reference, 3))))


@pytest.mark.dist
def test_resume_continues_the_device_augmentation_stream_on_two_processes(tmp_path):
    """2 gloo processes (4 images each): resumed from step 3 (as after a kill), the run reproduces the
    uninterrupted 2-process run's losses and final weights, so every rank redraws its own augmentations."""
    spawn(_reference_then_resumed, 2, str(tmp_path))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert json.loads((resumed / "run.json").read_text())["world_size"] == 2
    assert [s for s, _ in losses(resumed)] == [4, 5, 6] and [s for s, _ in losses(reference)] == list(range(1, 7))
    _assert_continues(resumed, reference, resumed_from=3)


def test_decode_on_the_device_matches_worker_decoding(tmp_path):
    """folder:PATH,decode=device: workers send file bytes, the trainer decodes them (CPU here: libjpeg-turbo;
    CUDA: nvJPEG, measured in tools/bench_augment.py); same pixels as the workers' PIL decoding."""
    import numpy as np
    from PIL import Image

    from composer.data.spec import open_dataset as open_spec
    from composer.train.batches import StageCollate
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.jpg")
    pil = open_spec(f"folder:{tmp_path}", "train")
    raw = open_spec(f"folder:{tmp_path},decode=device", "train")
    assert set(raw[0]) == {"encoded", "label"} and raw[0]["encoded"].ndim == 1
    model = composer.build(composer.load(MOCO))
    stage = DeviceStage(model.data_stage, model.model_inputs, seed=0, rank=0)
    items = [((0, 0, 0), raw[i], ()) for i in range(6)]  # (position, sample, unreadable files passed over)
    _, collated, _ = StageCollate(raw_batch, 0, 0, stage.raw_keys, in_worker=True)(items)
    from composer.data.folders import decode_images
    for i, image in enumerate(decode_images(collated["encoded"])):
        assert (image.int() - pil[i]["image"].int()).abs().max() <= 1  # both libjpeg(-turbo); IDCT may differ
    out = stage((0, 0, 0), collated)
    assert out["x_q"].shape == (6, 3, 16, 16)
    # the per-sample path in workers decodes the bytes itself
    _, per, _ = StageCollate(model.data_stage, 0, 0, model.model_inputs, in_worker=True)(items)
    assert per["x_q"].shape == (6, 3, 16, 16)
