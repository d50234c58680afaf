"""export a run's encoder: ptc export RUN -o encoder.safetensors

Writes the graph's ``embedding:`` block as a safetensors file that timm loads with ``strict=True`` (see
``composer.evaluate.export`` for the format and how to load it).
"""
from __future__ import annotations

import argparse

from composer.evaluate.export import export_embedding
from composer.train.runlog import open_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run folder written by ptc train")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")


def run(args) -> int:
    model, _, path = open_run(args.run_dir, args.checkpoint)
    meta = export_embedding(model, args.output, path)
    print(f"wrote {args.output}: {meta['block']} ({meta['format']}, {meta['tensors']} tensors) from {path}")
    return 0
