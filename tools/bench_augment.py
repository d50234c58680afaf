"""Augmentation throughput per core: the per-sample torchvision path against the batched path, side by side.

    python tools/bench.py augment          # or: python tools/bench_augment.py [--batch 64] [--reps 3]

Both paths run the same blocks (``augment.moco_v2`` one view, ``augment.simclr`` two views, ``augment.dino``
2 × 224 + 10 × 96) on uint8 (B, 3, 256, 256) photo-like images (a smooth colour field plus fine noise) with one
thread, as one DataLoader worker would. images/s counts source images (all views of an image = one image).
The two paths alternate within each repetition and the medians are compared, so machine noise hits both.
Target of the batched path: >= 3x the per-sample path.

Decoding: JPEGs (256 px, quality 90) decoded per file with PIL, as the workers do (``folder:PATH``), against
``decode_images`` of the trainer (``folder:PATH,decode=device``): ``decode_image`` on the CPU, and one batched
nvJPEG ``decode_jpeg`` call when CUDA is available (otherwise that row says so).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from composer.blocks import registry

RECIPES = {"moco_v2 x1": ("augment.moco_v2", {"views": 1}), "simclr x2": ("augment.simclr", {"views": 2}),
           "dino 2x224+10x96": ("augment.dino", {"local_crops": 10})}


def smooth_images(n: int, side: int = 256, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, side, side): low-frequency colour field plus fine noise."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(n, 3, 16, 16, generator=g), size=(side, side), mode="bicubic")
    x = low + 0.05 * torch.randn(n, 3, side, side, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def bench_decode(x: torch.Tensor, reps: int) -> None:
    """images/s of PIL per-file decoding (the workers) against the trainer's decoders, side by side."""
    from PIL import Image

    from composer.data.folders import decode_images
    files = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=90)
        files.append(buf.getvalue())
    encoded = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]

    def pil():
        import numpy as np
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(f)).convert("RGB"))) for f in files]

    paths = {"PIL per file (workers)": pil, "decode_image, CPU": lambda: decode_images(encoded, "cpu")}
    if torch.cuda.is_available():
        def cuda():
            decode_images(encoded, "cuda")
            torch.cuda.synchronize()
        paths["decode_jpeg nvJPEG batch, CUDA"] = cuda
    times = {k: [] for k in paths}
    for fn in paths.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in paths.items():
            times[name].append(_once(fn))
    base = len(x) / statistics.median(times["PIL per file (workers)"])
    for name, t in times.items():
        rate = len(x) / statistics.median(t)
        print(f"augment: decode {name:32s}{rate:10.1f} images/s{rate / base:7.2f}x", flush=True)
    if not torch.cuda.is_available():
        print("augment: decode on CUDA: no GPU on this machine, not measured")


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.py augment")
    ap.add_argument("--batch", type=int, default=64, help="images per batch (both paths)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv if argv is not None else [])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = smooth_images(args.batch)
    print(f"augment: images/s per core, batch {args.batch}, 256 px uint8 sources (batched: the default CPU path, "
          f"one image at a time in cache)")
    print(f"augment: {'recipe':18s}{'per-sample':>12s}{'batched':>12s}{'ratio':>8s}")
    try:
        for name, (kind, kw) in RECIPES.items():
            per_sample = registry.get(kind).cls(**kw)
            batched = registry.get(kind).cls(**kw)
            assert batched.use_batched(True), batched.batched_reason()
            torch.manual_seed(0)
            with torch.no_grad():
                per_sample(x[:4]), batched(x[:4])  # warm-up
                times = {"per": [], "bat": []}
                for _ in range(args.reps):
                    times["per"].append(_once(lambda f=per_sample: f(x)))
                    times["bat"].append(_once(lambda f=batched: f(x)))
            per, bat = (args.batch / statistics.median(times[k]) for k in ("per", "bat"))
            print(f"augment: {name:18s}{per:12.1f}{bat:12.1f}{bat / per:7.2f}x", flush=True)
            if torch.cuda.is_available():  # the same blocks on the GPU (matmul crop, whole-batch kernels)
                xc = x.cuda()

                def on_gpu(f=batched, images=xc):
                    f(images)
                    torch.cuda.synchronize()
                on_gpu()
                gpu = args.batch / statistics.median([_once(on_gpu) for _ in range(args.reps)])
                print(f"augment: {name:18s} batched on CUDA {gpu:10.1f} images/s ({gpu / per:.1f}x one core's "
                      f"per-sample path)", flush=True)
        bench_decode(x, args.reps)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main(sys.argv[1:])
