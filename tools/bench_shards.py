"""Benchmarks of the ``wds:`` shard reader and the caption tokenizers (sections of tools/bench.py).

    python tools/bench.py shards        # images/s: shard reader vs image-folder reader, same JPEGs, one run
    python tools/bench.py tokenizers    # captions/s: tokenizer.clip_bpe (python, rust) vs open_clip

shards: N JPEGs (256², quality 95, smooth random content; about 13 KiB each, smaller than web photos)
written once as an image folder (``folder:``) and as shards (``ptc shards`` format, 1000 per shard); each
reader decodes all of them to uint8 (3, H, W) in a shuffled order (what the training sampler asks for) in
alternating rounds; the median round is reported, and the ratio shards / folder. For reference, the same shards
streamed by ``webdataset.WebDataset`` (in file order, as it reads; decoded to uint8 tensors).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from composer.data.folders import ImageFolderDataset  # noqa: E402
from composer.data.shards import ShardDataset, pattern_of, write_shards  # noqa: E402


def _image(i: int, side: int = 256) -> np.ndarray:
    rng = np.random.default_rng(i)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # upsampled noise: JPEG sizes like photos
    return np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC))


def _round(dataset, order) -> float:
    t = time.perf_counter()
    for i in order:
        dataset[int(i)]
    return time.perf_counter() - t


def main(n: int = 2000, rounds: int = 3) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(n):
            folder = root / "folder" / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(i)).save(folder / f"{i:06d}.jpg", quality=95)
        folder_data = ImageFolderDataset(root / "folder")
        samples = ({"image": folder_data[i]["image"], "label": folder_data[i]["label"], "caption": "a photo"}
                   for i in range(n))
        shard_data = ShardDataset(pattern_of(write_shards(samples, root / "shards", maxcount=1000, fmt="jpg")))
        order = np.random.default_rng(0).permutation(n)
        stream = _webdataset_round(pattern_of(sorted((root / "shards").glob("*.tar"))), n)
        times: dict[str, list[float]] = {"folder": [], "shards": [], "webdataset": []}
        for _ in range(rounds):  # alternate, so load changes on the shared machine hit all alike
            times["folder"].append(_round(folder_data, order))
            times["shards"].append(_round(shard_data, order))
            if stream is not None:
                times["webdataset"].append(stream())
        size = sum(p.stat().st_size for p in (root / "folder").rglob("*.jpg")) / n / 1024
    rate = {k: n / statistics.median(v) for k, v in times.items() if v}
    ref = f"; webdataset.WebDataset, read in file order: {rate['webdataset']:.0f} images/s" if "webdataset" in rate \
        else ""
    print(f"shards: {n} JPEGs 256² (~{size:.0f} KiB), decoded to uint8 in shuffled order, median of {rounds} rounds: "
          f"image folder {rate['folder']:.0f} images/s, shards {rate['shards']:.0f} images/s, "
          f"shards/folder {rate['shards'] / rate['folder']:.2f}{ref}")


def _webdataset_round(pattern: str, n: int):
    """A timed pass of ``webdataset.WebDataset`` over the same shards (a stream: file order, no shuffle), decoding
    to uint8 tensors; None without the package (a test-only dependency)."""
    try:
        import webdataset as wds
    except ImportError:
        return None

    def run() -> float:
        t = time.perf_counter()
        count = sum(1 for _ in wds.WebDataset(pattern, shardshuffle=False).decode("torchrgb8").to_tuple("jpg", "txt"))
        assert count == n, count
        return time.perf_counter() - t
    return run


def tokenizers(rounds: int = 3) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from text_helpers import make_captions

    from composer.blocks.clip_bpe import ClipTokenizer
    captions = make_captions(3000, seed=1)
    readers = {"clip_bpe python": ClipTokenizer(backend="python"), "clip_bpe rust": ClipTokenizer(backend="rust")}
    try:
        import open_clip
        readers["open_clip"] = open_clip.get_tokenizer("ViT-B-32")
    except ImportError:
        pass
    times: dict[str, list[float]] = {k: [] for k in readers}
    for _ in range(rounds):
        for name, tok in readers.items():
            t = time.perf_counter()
            tok(captions)
            times[name].append(time.perf_counter() - t)
    rate = {k: len(captions) / statistics.median(v) for k, v in times.items()}
    line = ", ".join(f"{k} {v:.0f}" for k, v in rate.items())
    ref = f"; python/open_clip {rate['clip_bpe python'] / rate['open_clip']:.2f}" if "open_clip" in rate else ""
    print(f"tokenizers: {len(captions)} captions (mean {np.mean([len(c) for c in captions]):.0f} chars), "
          f"captions/s: {line}{ref}")
