"""What the checkpoint checks cost: writing and reading a checkpoint of MoCo v2 (tiny variant) with the content
checksum, the finiteness check and the read-back against a plain ``torch.save`` / ``torch.load``, side by side.

    python tools/bench_checkpoint.py            # or: python tools/bench.py checkpoint
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import composer  # noqa: E402
from composer.graph.train_section import parse_train  # noqa: E402
from composer.train import checkpoint  # noqa: E402
from composer.train.optim import build_optimizer  # noqa: E402


def _median(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(graph: str = "graphs/moco_v2.yaml", variant: str = "tiny", rounds: int = 7) -> None:
    torch.set_num_threads(1)
    spec = composer.load(graph, variant=variant)
    model = composer.build(spec, check=False)
    optimizer = build_optimizer(model, parse_train(spec))
    for p in model.parameters():  # one step's worth of optimizer state (momentum buffers), as in a real run
        p.grad = torch.randn_like(p) if p.requires_grad else None
    optimizer.step()
    state = {"format": checkpoint.FORMAT, "step": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        plain, ours = Path(tmp) / "plain.pt", Path(tmp) / "ours.pt"

        def plain_save():
            with open(plain, "wb") as f:  # the write the module did before checksums: save, fsync, rename
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        t_plain = _median(plain_save, rounds)
        t_ours = _median(lambda: checkpoint.save(ours, state), rounds)
        t_digest = _median(lambda: checkpoint.digest(state), rounds)
        t_finite = _median(lambda: checkpoint.nonfinite(state), rounds)
        t_load_plain = _median(lambda: torch.load(plain, map_location="cpu", weights_only=True), rounds)
        t_load_ours = _median(lambda: checkpoint.load(ours), rounds)
        size = ours.stat().st_size
    print(f"checkpoint: {graph} ({variant}), {size / 1e6:.1f} MB with SGD momentum: "
          f"save {t_plain * 1e3:.1f} ms plain, {t_ours * 1e3:.1f} ms checked (x{t_ours / t_plain:.2f}; of which "
          f"sha256 {t_digest * 1e3:.1f} ms, finiteness {t_finite * 1e3:.1f} ms, the rest the read-back); "
          f"load {t_load_plain * 1e3:.1f} ms plain, {t_load_ours * 1e3:.1f} ms verified "
          f"(x{t_load_ours / t_load_plain:.2f})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
