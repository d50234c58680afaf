"""A run killed with SIGKILL and resumed reproduces the uninterrupted run's loss curve and weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from train_helpers import DATA, MOCO, ROOT, fast, final_model, losses, ptc

import composer
from composer.train import checkpoint, train
from composer.train.runlog import read_metrics

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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "composer", *_cli_args(killed, workers=2)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                steps = [m["step"] for m in read_metrics(killed)] if (killed / "metrics.jsonl").exists() else []
                if steps and steps[-1] >= 12:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed: " + \
                (tmp_path / "stderr.txt").read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
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
