"""Does a graph's model stage compile whole, and does the compiled training step compute what eager computes?

    python tools/compile_check.py graphs/ibot.yaml --variant tiny --steps 3 --backend inductor

Builds the graph twice from one seed, wraps one copy's model stage in ``torch.compile(fullgraph=True)`` (a graph
break is an error, not a silent fallback) and runs ``--steps`` training steps on both: forward, backward, the
graph's optimizer with its lr and weight-decay schedules, gradient clipping, last-layer freezing and the state
updates (EMA teachers, centres, queues), each step on the same augmented batch. Prints the seconds of the first
compiled step (the compilation), the steady-state step times and the largest loss difference; exits 1 when a loss
differs by more than ``--rtol``.

Random numbers inside the model stage (drop path, dropout) are drawn by inductor's own generator unless
``torch._inductor.config.fallback_random`` is set, so it is set: both copies then draw the same numbers from
torch's global generator, reseeded before each forward.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import composer  # noqa: E402
from composer.graph.shapes import example_batch  # noqa: E402
from composer.graph.train_section import parse_train  # noqa: E402
from composer.train.optim import build_optimizer, clip_gradients, freeze_gradients, set_hyperparameters  # noqa: E402


def _build(path: str, variant: str | None, overrides: list[str], seed: int):
    torch.manual_seed(seed)
    spec = composer.load(path, overrides or None, variant)
    return spec, composer.build(spec, check=False)


def _trainer(model, cfg, total: int, spe: int):
    """One training step of composer.train.loop without the data loader, DDP and logging."""
    model.bind_schedules(total, spe)
    lr_schedule, wd_schedule = cfg.lr.bind(total, spe), cfg.weight_decay.bind(total, spe)
    optimizer = build_optimizer(model, cfg)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    def step(i: int, batch: dict, seed: int) -> float:
        set_hyperparameters(optimizer, lr_schedule.at(i) * cfg.lr_factor(), wd_schedule.at(i))
        torch.manual_seed(seed)  # drop path / dropout draws: the same for both copies
        out = model(batch)
        out.loss.backward()
        frozen = [part for part, until in cfg.freeze.items() if i < until.steps(spe)]
        if frozen:
            freeze_gradients(optimizer, frozen)
        if cfg.clip_grad:
            clip_gradients(trainable, *cfg.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update(out, i)
        return float(out.loss.detach())

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graph")
    p.add_argument("--variant")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="graph override")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-4)
    args = p.parse_args(argv)
    torch._inductor.config.fallback_random = True

    spec, eager = _build(args.graph, args.variant, args.set, args.seed)
    _, compiled = _build(args.graph, args.variant, args.set, args.seed)
    compiled.compile(fullgraph=True, backend=args.backend)
    cfg = parse_train(spec)
    total, spe = max(args.steps, 100), 10  # schedules as in a short run; the first steps are what runs
    steps = {"eager": _trainer(eager, cfg, total, spe), "compiled": _trainer(compiled, cfg, total, spe)}
    eager.train(), compiled.train()

    worst, times = 0.0, {"eager": [], "compiled": []}
    for i in range(args.steps):
        torch.manual_seed(args.seed * 1000 + i)
        with torch.no_grad():
            batch = eager.data_stage(example_batch(spec, args.batch))
        losses = {}
        for name, step in steps.items():
            t = time.perf_counter()
            losses[name] = step(i, batch, args.seed * 1000 + i)
            times[name].append(time.perf_counter() - t)
        diff = abs(losses["compiled"] - losses["eager"])
        worst = max(worst, diff / max(abs(losses["eager"]), 1e-12))
        print(f"step {i}: loss eager {losses['eager']:.6f} compiled {losses['compiled']:.6f} "
              f"(|diff| {diff:.2e}); seconds eager {times['eager'][-1]:.2f} compiled {times['compiled'][-1]:.2f}")
    print(f"{spec.name}: fullgraph=True, backend {args.backend}: first compiled step (compilation) "
          f"{times['compiled'][0]:.1f} s; largest relative loss difference {worst:.1e} over {args.steps} steps")
    return 0 if worst <= args.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
