"""MAE's cost against the mask ratio, measured side by side in one run (also ``python tools/bench.py masking``).

    python tools/bench_masking.py [--batch 64] [--rounds 8] [--variant tiny|small]

For each mask ratio 0.0, 0.5, 0.75 and 0.9, graphs/mae.yaml is built with ``blocks.masker.ratio`` set to it
(same seed, so the same initial weights) and timed on one fixed batch of the embedded shapes data: a training
step is forward + backward + AdamW step. Steps of the four models are interleaved round by round, so load on a
shared machine hits them alike; the median of the rounds is reported, with the ratio to the unmasked step.
FLOPs (torch.utils.flop_counter, forward only) are given for the encoder alone and for the whole model stage:
the encoder runs on the kept tokens only, so its cost follows 1 − ratio; MAE's decoder always runs on every
patch, which is why the step gains less than the encoder.

Variants: ``tiny`` is the graph's tiny variant (64 px, 8 px patches: an 8x8 grid, 128-d encoder of depth 4,
the one trained in docs/masked_modelling.md); ``small`` widens its encoder to ViT-S shape (384-d, depth 12,
6 heads), where the encoder dominates the step as in the paper's ViT-L with its 8-block, 512-d decoder.

At ratio 0.0 no patch is removed, so MAE's loss (a mean over removed patches) is 0/0; the step still runs the
full computation, which is what is timed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import composer  # noqa: E402
from composer.data.shapes import example_batch  # noqa: E402

RATIOS = (0.0, 0.5, 0.75, 0.9)
SMALL = ["blocks.encoder.embed_dim=384", "blocks.encoder.depth=12", "blocks.encoder.num_heads=6",
         "blocks.decoder.in_dim=384"]


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def main(batch: int = 64, rounds: int = 8, variant: str = "tiny") -> dict[float, dict]:
    """Print (and return) step time and FLOPs per mask ratio, relative to ratio 0.0."""
    overrides = SMALL if variant == "small" else []
    raw = example_batch(n=batch, size=64)
    runs = {}
    for ratio in RATIOS:
        torch.manual_seed(0)
        spec = composer.load(ROOT / "graphs" / "mae.yaml", [*overrides, f"blocks.masker.ratio={ratio}"],
                             variant="tiny")
        model = composer.build(spec, check=ratio == RATIOS[0])
        torch.manual_seed(1)
        data = model.data_stage(raw)
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

        def step(model=model, data=data, opt=opt):
            out = model(data)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        x, keep = data["x"], data["masks"].keep
        runs[ratio] = {"step": step, "times": [], "kept": keep.shape[1],
                       "encoder_flops": _flops(lambda m=model, x=x, k=keep: m.encoder(x, k)),
                       "model_flops": _flops(lambda m=model, d=data: m(d))}
    for run in runs.values():  # warm-up: first-touch allocations, thread pools
        run["step"]()
    for _ in range(rounds):
        for run in runs.values():
            t = time.perf_counter()
            run["step"]()
            run["times"].append(time.perf_counter() - t)
    base = runs[RATIOS[0]]
    base_t = statistics.median(base["times"])
    print(f"masking: MAE ({variant}) training step vs mask ratio, batch {batch}, CPU threads "
          f"{torch.get_num_threads()}, median of {rounds} interleaved rounds")
    print(f"masking: {'ratio':>5} {'kept':>5} {'step ms':>9} {'step/unmasked':>14} "
          f"{'encoder GFLOP':>14} {'enc/unmasked':>13} {'model GFLOP':>12} {'model/unmasked':>15}")
    for ratio, run in runs.items():
        t = statistics.median(run["times"])
        run["step_ms"] = t * 1e3
        run["step_ratio"] = t / base_t
        run["encoder_ratio"] = run["encoder_flops"] / base["encoder_flops"]
        run["model_ratio"] = run["model_flops"] / base["model_flops"]
        print(f"masking: {ratio:>5.2f} {run['kept']:>5d} {t * 1e3:>9.1f} {run['step_ratio']:>14.3f} "
              f"{run['encoder_flops'] / 1e9:>14.2f} {run['encoder_ratio']:>13.3f} "
              f"{run['model_flops'] / 1e9:>12.2f} {run['model_ratio']:>15.3f}")
    return {r: {k: v for k, v in run.items() if k not in ("step", "times")} for r, run in runs.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--variant", choices=["tiny", "small"], default="tiny")
    args = parser.parse_args()
    main(args.batch, args.rounds, args.variant)
