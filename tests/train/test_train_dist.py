"""Training on 2 gloo processes: the same training as one process on the global batch, and torchrun recovery."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_helpers import spawn
from train_helpers import DATA, MOCO, MOCO_DIST, ROOT, SIMCLR, fast, final_model, losses

import composer
from composer.train import checkpoint, train
from composer.train.runlog import read_metrics

# Both graphs are deterministic and BatchNorm-free (see train_helpers.MOCO_DIST): NT-Xent gathers the views of
# every process with gradient; InfoNCE reads a queue that gathers the keys of every process after each step.
CASES = {
    "simclr_gather": (SIMCLR, "dist", {"train.batch_size": 8, "train.epochs": None, "train.steps": 4,
                                       "train.lr": "{cosine: [0.8, 0.1], warmup: 1}"}),
    "moco_queue": (MOCO, None, {**MOCO_DIST, "train.batch_size": 8, "train.steps": 4, "train.lr": 0.5}),
}


def _train_cases(rank: int, world_size: int, root: str) -> None:
    for name, (graph, variant, overrides) in CASES.items():
        train(composer.load(graph, overrides, variant), fast(Path(root) / f"{name}-w{world_size}"))


@pytest.mark.dist
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    _train_cases(0, 1, str(tmp_path))
    spawn(_train_cases, 2, str(tmp_path))
    for name in CASES:
        one, two = tmp_path / f"{name}-w1", tmp_path / f"{name}-w2"
        options = json.loads((two / "run.json").read_text())
        assert (options["world_size"], options["micro_batch"]) == (2, 4), name
        a, b = losses(one), losses(two)
        assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4], name
        assert torch.allclose(torch.tensor([v for _, v in a]), torch.tensor([v for _, v in b]), atol=1e-5), name
        assert a[-1][1] != a[0][1]  # the weights moved
        ma, mb = final_model(one), final_model(two)
        for key in ma:
            assert torch.allclose(ma[key].float(), mb[key].float(), atol=1e-5), f"{name}: {key}"
    assert int(final_model(tmp_path / "moco_queue-w2")["queue.ptr"]) == 0  # 4 steps x 8 keys, queue of 16


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.dist
def test_torchrun_max_restarts_recovers_from_a_killed_worker(tmp_path):
    out, steps = tmp_path / "run", 40
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.2", "-m", "composer", "train", MOCO,
           "--set", "train.batch_size=8", "--steps", str(steps), "--data", DATA, "--out", str(out),
           "--ckpt-every", "5", "--workers", "0", "--device", "cpu", "--no-progress", "--probe-every", "-1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "torchrun.txt"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline, victim = time.monotonic() + 240, None
            while time.monotonic() < deadline and proc.poll() is None and victim is None:
                done = [m["step"] for m in read_metrics(out)] if (out / "metrics.jsonl").exists() else []
                if done and done[-1] >= 7:
                    victim = next((p for p in _children(proc.pid) if _rank_of(p) == 1), None)
                time.sleep(0.05)
            assert victim is not None, "no worker to kill: " + log.read_text()[-3000:]
            os.kill(victim, signal.SIGKILL)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "resumed from" in text
    assert checkpoint.load(checkpoint.latest(out))["step"] == steps
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == list(range(1, steps + 1))
