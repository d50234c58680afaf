"""A run killed with SIGKILL and resumed reproduces the uninterrupted run's loss curve and weights."""
from __future__ import annotations

import torch
from train_helpers import DATA, MOCO, fast, final_model, kill_during_run, losses, ptc

import composer
from composer.train import checkpoint, train

STEPS = 80
# drop-path makes the model's own random stream matter, so a wrongly restored RNG state would show.
OVERRIDES = {"train.batch_size": 8, "train.steps": STEPS, "train.lr": 0.05,
             "blocks.encoder.model_args": "{drop_path_rate: 0.2}"}


def _cli_args(out, workers: int) -> list[str]:
    sets = [x for k, v in OVERRIDES.items() if k != "train.steps" for x in ("--set", f"{k}={v}")]
    return ["train", MOCO, *sets, "--steps", str(STEPS), "--data", DATA, "--out", str(out), "--ckpt-every", "5",
            "--workers", str(workers), "--threads", "1", "--device", "cpu", "--no-progress", "--probe-every", "-1"]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    train(composer.load(MOCO, OVERRIDES), fast(reference, ckpt_every=5))

    killed = tmp_path / "killed"
    kill_during_run(killed, _cli_args(killed, workers=2), 12, tmp_path / "stderr.txt")
    interrupted_at = losses(killed)[-1][0]
    assert 12 <= interrupted_at < STEPS
    assert checkpoint.step_of(checkpoint.latest(killed)) < STEPS

    # resume in the main process (no workers): the batches must not depend on who built them
    done = ptc(*_cli_args(killed, workers=0), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr

    got, want = losses(killed), losses(reference)
    assert [s for s, _ in got] == list(range(1, STEPS + 1))
    assert torch.allclose(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]), rtol=1e-5,
                          atol=1e-6)
    a, b = final_model(killed), final_model(reference)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key
