"""Expression losses against the hand-written blocks they equal: forward + backward, eager and compiled.

    python tools/bench.py expr

NT-Xent (SimCLR, 2 x 256 x 128) and MoCo's InfoNCE (256 queries against a 4096-key queue), each as
``loss.expr`` with the program of composer/blocks/expr/examples.py and as its shipped block, timed alternately in
one run; the ratio expression / block is what counts (target <= 1.0 within noise).
"""
from __future__ import annotations

import statistics
import time

import torch

from composer.blocks.expr.block import ExpressionLoss
from composer.blocks.expr.examples import INFO_NCE, NT_XENT
from composer.blocks.losses.info_nce import InfoNCE
from composer.blocks.losses.nt_xent import NTXent


def _inputs(name: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    if name == "nt_xent":
        return {"z": torch.randn(2, 256, 128, generator=gen, requires_grad=True)}
    norm = torch.nn.functional.normalize
    return {"query": norm(torch.randn(256, 128, generator=gen), dim=1).requires_grad_(True),
            "positive": norm(torch.randn(256, 128, generator=gen), dim=1),
            "negatives": norm(torch.randn(4096, 128, generator=gen), dim=1)}


def _step(fn, inputs):
    loss = fn(**inputs)
    loss.backward()
    for v in inputs.values():
        v.grad = None


def _median_ms(fn, inputs, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        _step(fn, inputs)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(rounds: int = 30) -> None:
    torch.manual_seed(0)
    cases = {"nt_xent": (ExpressionLoss(expr=NT_XENT), NTXent(temperature=0.1)),
             "info_nce": (ExpressionLoss(expr=INFO_NCE), InfoNCE(temperature=0.2))}
    print(f"expr: forward + backward, median of {rounds} alternating rounds (ms)")
    print(f"  {'loss':9s} {'mode':9s} {'expression':>11s} {'block':>8s} {'ratio':>7s}")
    for name, (expression, block) in cases.items():
        inputs = _inputs(name)
        for mode in ("eager", "compiled"):
            fns = [expression, block] if mode == "eager" else [torch.compile(m) for m in (expression, block)]
            for fn in fns:  # warm-up (and compilation) outside the timing
                _step(fn, inputs)
                _step(fn, inputs)
            pairs = [(_median_ms(fns[0], inputs, 1), _median_ms(fns[1], inputs, 1)) for _ in range(rounds)]
            ours, theirs = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
            print(f"  {name:9s} {mode:9s} {ours:11.2f} {theirs:8.2f} {ours / theirs:7.3f}")


if __name__ == "__main__":
    main()
