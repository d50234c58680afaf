"""write a data spec as WebDataset shards: ptc shards SPEC OUT [--maxcount N] [--format png|jpg]

Writes ``OUT/train/00000.tar …`` and ``OUT/val/00000.tar …`` (img2dataset's member names: ``KEY.png`` or
``KEY.jpg``, ``KEY.txt``, ``KEY.cls``, ``KEY.json`` for grounding boxes and spans; class names in
``classes.txt``) from any data spec (the embedded shapes, an image folder, a captions CSV, grounding JSON), and
prints the ``wds:`` spec that reads them back. The format is ``composer.data.shards``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from composer.data.shards import pattern_of, write_shards
from composer.data.spec import open_dataset
from composer.runtime.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="data spec to write, e.g. shapes:n=8192,size=32 or folder:DIR")
    p.add_argument("out", metavar="OUT", help="output folder (train/ and val/ shards go under it)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--format", choices=("png", "jpg"), default="png",
                   help="image encoding: png (lossless, default) or jpg (quality 95, as img2dataset)")
    p.add_argument("--n-val", type=int, default=5000, help="validation samples written (default 5000; 0: all)")
    p.add_argument("--no-val", action="store_true", help="write the training split only")


def _samples(dataset, n: int):
    for i in range(n):
        yield dataset[i]
        if i % 1000 == 999:
            print(f"  {i + 1}/{n}", file=sys.stderr, flush=True)


def run(args) -> int:
    out = Path(args.out)
    if any(out.glob("*/*.tar")):
        raise UserError(f"shards: {out} already holds shards; choose an empty folder")
    if args.maxcount < 1:
        raise UserError(f"shards: --maxcount must be >= 1, got {args.maxcount}")
    written = {}
    try:
        for split in ("train",) if args.no_val else ("train", "val"):
            dataset = open_dataset(args.spec, split)
            n = len(dataset) if split == "train" or not args.n_val else min(args.n_val, len(dataset))
            paths = write_shards(_samples(dataset, n), out / split, args.maxcount, args.format,
                                 list(getattr(dataset, "classes", []) or []))
            written[split] = pattern_of(paths)
            print(f"{split}: {n} samples in {len(paths)} shard(s) under {out / split}")
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    spec = f"wds:{written['train']}" + (f",val={written['val']}" if "val" in written else "")
    print(f"data spec: {spec}")
    return 0
