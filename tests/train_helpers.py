"""Shared pieces of the trainer tests: fast run options, the tiny graphs and reading a run back."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from composer.train import TrainOptions, checkpoint
from composer.train.runlog import read_metrics

ROOT = Path(__file__).resolve().parent.parent
SIMCLR = str(ROOT / "tests/graphs/tiny_simclr.yaml")
MOCO = str(ROOT / "tests/graphs/tiny_moco.yaml")
DATA = "shapes:n=64,size=32"

# tiny_moco made deterministic and BatchNorm-free (full-image crops, a LayerNorm ViT), as tiny_simclr's `dist`
# variant: then splitting a batch over processes or micro-batches must not change the training.
MOCO_DIST = {
    "blocks.aug": "{type: augment.clip, size: 16, scale: [1.0, 1.0]}",
    "blocks.encoder.arch": "test_vit",
    "blocks.encoder.model_args": "{img_size: 16, patch_size: 8, depth: 1}",
    "blocks.projector.dims": "[64, 32, 16]",
}


def fast(out, **kw) -> TrainOptions:
    """Options for a test run: the CPU (deterministic, and gloo for the distributed tests), one thread (a busy
    2-core machine punishes two), no workers, probe, progress bar, TensorBoard or graph check unless asked."""
    base = dict(data=DATA, out=str(out), device="cpu", workers=0, threads=1, probe_every=-1, progress=False,
                tensorboard=False, check=False)
    base.update(kw)
    return TrainOptions(**base)


def losses(run_dir) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(run_dir) if "loss" in m]


def final_model(run_dir) -> dict[str, torch.Tensor]:
    return checkpoint.load(checkpoint.latest(run_dir))["model"]


def ptc(*args, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run ``python -m composer ARGS`` in a fresh interpreter from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "composer", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def kill_during_run(run_dir: Path, cli_args: list, after_step: int, stderr_path: Path, timeout: float = 240) -> None:
    """Start ``python -m composer *cli_args`` and SIGKILL it once ``run_dir``'s metrics reach ``after_step``.

    Fails if the run ends by itself before it could be killed (its stderr tail is in the message)."""
    import signal
    import time
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "composer", *map(str, cli_args)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                steps = [m["step"] for m in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").exists() else []
                if steps and steps[-1] >= after_step:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed: " + stderr_path.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
