"""evaluate a run's encoder: ptc eval RUN --probe knn|linear [--data SPEC] [--random-init]

Rebuilds the encoder from ``RUN/graph.yaml``, loads the newest checkpoint (or ``--checkpoint``), extracts frozen
features of the training split (the bank / the classifier's training set) and the validation split, and prints
the top-1 accuracy of a weighted kNN (k=20, T=0.07, DINO's protocol) or a linear probe. ``--random-init`` scores
the same encoder at the initialisation the run started from (the run's seed), the baseline training must beat.
"""
from __future__ import annotations

import argparse
import json
import sys

from composer.evaluate import embed
from composer.runtime.errors import UserError
from composer.train.runlog import open_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run folder written by ptc train")
    p.add_argument("--probe", choices=["knn", "linear"], default="knn")
    p.add_argument("--data", help="data spec (default: the run's training data)")
    p.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")
    p.add_argument("--random-init", action="store_true", help="evaluate the encoder at its initialisation")
    p.add_argument("--n-train", type=int, default=None, help="use at most N training images (default: all)")
    p.add_argument("--n-val", type=int, default=None, help="use at most N validation images (default: all)")
    p.add_argument("--k", type=int, default=20, help="neighbours of the kNN probe")
    p.add_argument("--embedding", metavar="BLOCK",
                   help="probe this block instead of the graph's 'embedding:' (e.g. DINO's teacher_encoder, "
                        "what DINO's eval_knn.py reads with its default --checkpoint_key teacher)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def run(args) -> int:
    model, options, path = open_run(args.run_dir, args.checkpoint, args.random_init, args.device)
    if args.embedding:
        if args.embedding not in model.spec.blocks:
            raise UserError(f"{args.run_dir}: --embedding {args.embedding!r} is not a block of graph "
                            f"{model.spec.name!r} (blocks: {', '.join(model.spec.blocks)})")
        model.spec.embedding = args.embedding
    if model.spec.embedding is None:
        raise UserError(f"{args.run_dir}: the graph names no 'embedding' block to evaluate")
    spec = args.data or options.get("data") or "shapes"
    try:
        data = embed.ProbeData.open(spec, args.n_train, args.n_val)
        acc = embed.run(model, data, args.probe, args.device, k=args.k)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    for where, cause in data.skipped.items():
        print(f"warning: skipped an unreadable image: {where} ({cause}); the next readable one stood in",
              file=sys.stderr)
    where = "random initialisation" if args.random_init else str(path)
    if args.json:
        print(json.dumps({"probe": args.probe, "top1": acc, "data": spec, "weights": where,
                          "n_train": len(data.train), "n_val": len(data.val)}))
    else:
        print(f"{args.probe} top-1 {acc:.4f}  ({len(data.train)} train / {len(data.val)} val images of {spec}; "
              f"{model.spec.embedding} from {where})")
    return 0
