"""tools/seeds.py (init vs trained over seeds, paired) and tools/probe_factors.py (the probe per scene factor).

Both read what the trainer's online probe and ``ptc eval`` compute, so the checks are that the three code paths
agree: a seed's step-0 figure from training equals a fresh build's probe with that seed (the initialisation
``--seed`` draws), the summary's statistics follow their formulas, and the factor probe's shape column equals
``ptc eval`` on the same images.
"""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys

import pytest

from train_helpers import ROOT, SIMCLR, ptc

DATA = "shapes:n=64,size=32"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_seeds_and_summary_statistics():
    seeds = _tool("seeds")
    assert seeds.parse_seeds(["0", "3-5", "9"]) == [0, 3, 4, 5, 9]
    rows = [(0, 0.10, 0.13), (1, 0.14, 0.12), (2, 0.12, 0.15)]
    text = "\n".join(seeds.summary(rows))
    diffs = [0.03, -0.02, 0.03]
    se = statistics.stdev(diffs) / math.sqrt(3)
    assert f"mean {statistics.fmean(diffs):+.4f}, standard error {se:.4f}" in text
    assert f"init: mean {statistics.fmean([0.10, 0.14, 0.12]):.4f}" in text


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    args = [sys.executable, str(ROOT / "tools/seeds.py"), SIMCLR, "--seeds", "0-1", "--out", str(out),
            "--data", DATA, "--n-train", "48", "--n-val", "32", "--workers", "0", "--set", "train.steps=2",
            "--set", "train.epochs=null"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout


def test_step_zero_is_the_seeds_initialisation(two_seeds):
    out, stdout = two_seeds
    seeds = _tool("seeds")
    inits = {}
    for seed in (0, 1):
        init, trained, last = seeds.trained_figures(out / f"tiny_simclr_s{seed}")
        assert last == 2
        inits[seed] = init
        fresh = seeds.init_figure(SIMCLR, None, ["train.steps=2"], seed, 48, 32, DATA)
        assert fresh == pytest.approx(init, abs=1e-9)
        assert f"seed {seed}: {init:.4f}, {trained:.4f}" in stdout
    # a finished run is read back, not trained again
    again = subprocess.run([sys.executable, str(ROOT / "tools/seeds.py"), SIMCLR, "--seeds", "0", "--out", str(out),
                            "--data", DATA], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0 and "$ " not in again.stdout


def test_factor_probe_shape_column_equals_ptc_eval(two_seeds):
    out, _ = two_seeds
    run = out / "tiny_simclr_s0"
    done = subprocess.run([sys.executable, str(ROOT / "tools/probe_factors.py"), str(run), "--data", DATA,
                           "--n-train", "48", "--n-val", "32", "--threads", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in done.stdout.splitlines()[1:]}
    for flag, row in (("--random-init", "init"), (None, "trained")):
        evaluated = ptc("eval", str(run), "--probe", "knn", "--data", DATA, "--n-train", "48", "--n-val", "32",
                        *([flag] if flag else []))
        assert evaluated.returncode == 0, evaluated.stderr
        top1 = float(evaluated.stdout.split("top-1")[1].split()[0])
        assert rows[row][0] == pytest.approx(top1, abs=1e-4)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows["init"][0] == pytest.approx(next(m["probe/knn"] for m in metrics if m["step"] == 0), abs=1e-4)
