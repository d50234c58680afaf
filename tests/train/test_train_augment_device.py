"""``--augment device``: workers send raw uint8 batches, the data stage runs batched in the training process,
seeded per (seed, epoch, step, micro-batch, rank), so a resumed run draws the augmentations of an uninterrupted one."""
from __future__ import annotations

import torch
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
    return [stage(tag, raw) for tag, raw in loader]


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
    got, want = losses(resumed), losses(reference)
    assert [s for s, _ in got] == list(range(5, 13))
    assert torch.allclose(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want[4:]]), rtol=1e-5,
                          atol=1e-6)
    a, b = final_model(resumed), final_model(reference)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5) for k in a)
