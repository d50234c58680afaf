"""Benchmarks, each measured side by side in one run and reported as ratios (machines here are shared and noisy).

    python tools/bench.py                 # everything
    python tools/bench.py compose load    # chosen sections: compose, compile, load, data, masking,
                                          # checkpoint, augment, expr, shards, tokenizers

- compose: a training step of the composed MoCo v2 graph against the hand-written module (same encoder, batch,
  inputs, weights); target: composed / hand-written <= 1.02.
- compile: the torch.compile'd model stage against eager (same graph, same inputs).
- load: loading plus building every shipped graph (target: under one second each).
- data, masking, checkpoint, augment: see tools/bench_data.py, tools/bench_masking.py, tools/bench_checkpoint.py
  and tools/bench_augment.py.
- expr: an expression loss against the hand-written block it equals, eager and compiled (tools/bench_expr.py).
- shards, tokenizers: the ``wds:`` shard reader against the image-folder reader (images/s, same JPEGs), and
  ``tokenizer.clip_bpe`` against open_clip (captions/s); see tools/bench_shards.py.
"""
from __future__ import annotations

import glob
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import composer  # noqa: E402


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_compose(batch_size: int = 32, size: int = 32, rounds: int = 15) -> None:
    from handwritten_moco import HandwrittenMoCo
    torch.manual_seed(0)
    spec = composer.load("graphs/moco_v2.yaml", variant="tiny", overrides=[f"blocks.aug.size={size}"])
    model = composer.build(spec)
    hand = HandwrittenMoCo(arch=spec.blocks["encoder"].params["arch"], dims=spec.blocks["projector"].params["dims"],
                           queue_size=spec.blocks["queue"].params["size"])
    # same weights in both
    hand.encoder.load_state_dict(model.encoder.net.state_dict())
    hand.key_encoder.load_state_dict(model.encoder.net.state_dict())
    hand.projector.load_state_dict({k.replace("net.", ""): v for k, v in model.projector.state_dict().items()})
    hand.key_projector.load_state_dict(hand.projector.state_dict())
    x_q, x_k = torch.randn(2, batch_size, 3, size, size)
    opt_c = torch.optim.SGD(model.trainable_parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    opt_h = torch.optim.SGD([p for p in hand.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                            weight_decay=1e-4)
    batch = {"x_q": x_q, "x_k": x_k}

    def step_composed():
        out = model(batch)
        opt_c.zero_grad(set_to_none=True)
        out.loss.backward()
        opt_c.step()
        model.update(out, 0)

    def step_hand():
        loss, k = hand(x_q, x_k)
        opt_h.zero_grad(set_to_none=True)
        loss.backward()
        opt_h.step()
        hand.update(k)

    for _ in range(3):  # warm-up
        step_composed()
        step_hand()
    composed, handwritten = [], []
    for _ in range(rounds):  # interleaved, so load on the machine hits both alike
        composed += _timed(step_composed, 1)
        handwritten += _timed(step_hand, 1)
    c, h = statistics.median(composed), statistics.median(handwritten)
    print(f"compose: MoCo v2 step (resnet18, batch {batch_size}, {size}px, CPU): composed {c * 1e3:.1f} ms, "
          f"hand-written {h * 1e3:.1f} ms, ratio {c / h:.3f} (target <= 1.02)")


def bench_compile(rounds: int = 10) -> None:
    from composer.graph.shapes import example_batch
    torch.manual_seed(0)
    spec = composer.load("tests/graphs/tiny_moco.yaml")
    model = composer.build(spec)
    batch = model.data_stage(example_batch(spec, 32))

    def step():
        out = model(batch)
        out.loss.backward()

    for _ in range(2):
        step()
    eager = _timed(step, rounds)
    model.compile()
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    for _ in range(2):
        step()
    compiled = _timed(step, rounds)
    e, c = statistics.median(eager), statistics.median(compiled)
    print(f"compile: tiny MoCo step (test_resnet, batch 32, 16px): eager {e * 1e3:.1f} ms, compiled {c * 1e3:.1f} ms, "
          f"compiled/eager {c / e:.3f}; first compiled step (compilation) {first:.1f} s")


def bench_load() -> None:
    worst = 0.0
    for path in sorted(glob.glob("graphs/*.yaml")):
        composer.build(composer.load(path), device="meta", check=False)  # warm imports and caches
        t = time.perf_counter()
        spec = composer.load(path)
        composer.build(spec, check=False)
        dt = time.perf_counter() - t
        worst = max(worst, dt)
        print(f"load: {path}: load + build {dt * 1e3:.0f} ms")
    print(f"load: slowest {worst * 1e3:.0f} ms (target < 1000 ms)")


SECTIONS = {"compose": bench_compose, "compile": bench_compile, "load": bench_load}
# section → (module in tools/, its function); each file holds one benchmark with its own docstring
MORE = {"data": ("bench_data", "main"), "masking": ("bench_masking", "main"),
        "checkpoint": ("bench_checkpoint", "main"), "augment": ("bench_augment", "main"), "expr": ("bench_expr", "main"),
        "shards": ("bench_shards", "main"), "tokenizers": ("bench_shards", "tokenizers")}


def main(argv: list[str]) -> None:
    import importlib
    for name, (module, function) in MORE.items():
        SECTIONS.setdefault(name, getattr(importlib.import_module(module), function))
    chosen = argv or list(SECTIONS)
    for name in chosen:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        SECTIONS[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
