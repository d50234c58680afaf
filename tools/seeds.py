"""Does training beat the random initialisation for more than one seed? A kNN probe over seeds, paired.

    python tools/seeds.py graphs/byol.yaml --variant tiny --seeds 0 1 2 --out runs/seeds
    python tools/seeds.py graphs/byol.yaml --variant tiny --seeds 0-9 --init-only

For each seed, trains the graph with ``ptc train --seed S`` (one run at a time, in ``OUT/<graph>_s<S>``; a run
that already finished there is read, not repeated) and reads the online probe's figures from its
``metrics.jsonl``: at step 0 (the encoder at the initialisation that seed draws) and after the last step. The
probe is the one ``ptc eval RUN --probe knn --n-train N --n-val M`` runs (weighted kNN, k = 20, T = 0.07).

Why paired and over seeds: on small data the random initialisation's own probe figure moves from seed to seed by
more than the probe's standard error (a tiny ResNet on the shapes data scores 0.111 with seed 0 and 0.141 with
seed 1), so a single seed's "trained minus init" says little. The table prints each seed's difference, their
mean and its standard error (sample standard deviation / sqrt(seeds)), and the mean trained and init figures.

``--init-only`` builds each seed's model and probes it without training (seconds per seed): the spread of the
random-init figure alone.
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import composer
from composer.train.runlog import read_metrics


def parse_seeds(text: list[str]) -> list[int]:
    """``["0", "2", "5-7"]`` → [0, 2, 5, 6, 7]."""
    seeds: list[int] = []
    for item in text:
        lo, _, hi = item.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def init_figure(graph: str, variant: str | None, overrides: list[str], seed: int, n_train: int, n_val: int,
                data: str | None) -> float:
    """The kNN figure of the graph's embedding at the initialisation ``ptc train --seed seed`` starts from."""
    from composer.evaluate import embed
    from composer.train import launch
    spec = composer.load(graph, overrides or None, variant)
    launch.seed_all(seed)
    model = composer.build(spec, check=False)
    return embed.run(model, embed.ProbeData.open(data or spec.data_spec or "shapes", n_train, n_val), "knn")


def trained_figures(run_dir: Path) -> tuple[float, float, int] | None:
    """(init, trained, last step) from a finished run's ``metrics.jsonl``; None when the run did not finish."""
    probes = {row["step"]: row["probe/knn"] for row in read_metrics(run_dir) if "probe/knn" in row}
    if 0 not in probes or len(probes) < 2:  # the last probe runs after the last step only
        return None
    last = max(probes)
    return probes[0], probes[last], last


def train(args, seed: int, run_dir: Path) -> None:
    cmd = [sys.executable, "-m", "composer", "train", args.graph, "--out", str(run_dir), "--seed", str(seed),
           "--workers", str(args.workers), "--threads", str(args.threads), "--no-progress",
           "--probe-every", "1000000000", "--probe-train", str(args.n_train), "--probe-val", str(args.n_val),
           "--overwrite"]
    if args.variant:
        cmd += ["--variant", args.variant]
    if args.data:
        cmd += ["--data", args.data]
    for item in args.overrides:
        cmd += ["--set", item]
    print("$", " ".join(cmd), flush=True)
    if subprocess.call(cmd) != 0:
        raise SystemExit(f"seeds.py: training seed {seed} failed (see {run_dir})")


def summary(rows: list[tuple[int, float, float | None]]) -> list[str]:
    lines = [f"{'seed':>4}  {'init':>7}  {'trained':>7}  {'diff':>7}"]
    for seed, init, trained in rows:
        tail = f"  {trained:7.4f}  {trained - init:+7.4f}" if trained is not None else ""
        lines.append(f"{seed:>4}  {init:7.4f}{tail}")
    inits = [r[1] for r in rows]
    lines.append(f"init: mean {statistics.fmean(inits):.4f}" + (f", sd {_sd(inits):.4f}" if len(inits) > 1 else "")
                 + f" over {len(inits)} seed{'s' if len(inits) > 1 else ''}")
    done = [r for r in rows if r[2] is not None]
    if done:
        diffs = [t - i for _, i, t in done]
        line = (f"trained: mean {statistics.fmean(t for *_, t in done):.4f}; trained - init: mean "
                f"{statistics.fmean(diffs):+.4f}")
        if len(diffs) > 1:  # a standard error needs two seeds
            se = _sd(diffs) / math.sqrt(len(diffs))
            line += f", standard error {se:.4f}" + (f" ({statistics.fmean(diffs) / se:+.1f} SE)" if se > 0 else "")
        lines.append(line)
    return lines


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("graph")
    p.add_argument("--variant")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--seeds", nargs="+", default=["0-2"], help="seeds and ranges, e.g. 0 1 2 or 0-4")
    p.add_argument("--out", default="runs/seeds", help="folder of the runs (one per seed)")
    p.add_argument("--data", help="data spec (default: the graph's, else shapes)")
    p.add_argument("--n-train", type=int, default=5000, help="probe bank size (training split)")
    p.add_argument("--n-val", type=int, default=2000, help="probe queries (validation split)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init-only", action="store_true", help="probe each seed's initialisation, do not train")
    args = p.parse_args(argv)
    rows = []
    for seed in parse_seeds(args.seeds):
        if args.init_only:
            import torch
            torch.set_num_threads(args.threads)
            rows.append((seed, init_figure(args.graph, args.variant, args.overrides, seed, args.n_train,
                                           args.n_val, args.data), None))
        else:
            run_dir = Path(args.out) / f"{Path(args.graph).stem}{'_' + args.variant if args.variant else ''}_s{seed}"
            found = trained_figures(run_dir)
            if found is None:
                train(args, seed, run_dir)
                found = trained_figures(run_dir)
            if found is None:
                raise SystemExit(f"seeds.py: {run_dir} has no probe figures at step 0 and at its last step")
            rows.append((seed, found[0], found[1]))
        print(f"seed {seed}: " + ", ".join(f"{v:.4f}" for v in rows[-1][1:] if v is not None), flush=True)
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
