"""What did an encoder learn from the shapes data? The kNN probe on each factor of the scenes, init vs trained.

    python tools/probe_factors.py runs/byol_tiny
    python tools/probe_factors.py runs/byol_tiny --n-train 1000 --n-val 500

The shapes data draws every image from a scene (see composer/data/shapes.py), so besides the label (the shape of
the largest object) each image has other factors a probe can ask for: the background texture (5 kinds), the
colour of the largest object (10 names) and the number of small objects (0 to 2). For the run's encoder at its
initialisation (the run's seed) and at its newest checkpoint, this prints the weighted kNN top-1 (k = 20,
T = 0.07, the probe of ``ptc eval``) for each factor, on the same images.

Why: a self-supervised method learns what tells its views apart and what its augmentations leave unchanged. Two
crops of one shapes image share their background texture, and colour jitter changes colours, so a method that
matches crops may learn texture and unlearn colour without learning shape; the shape probe alone cannot tell
"learnt nothing" from "learnt something else".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from composer.data.shapes import COLOURS, SHAPES, TEXTURES, ShapesDataset  # noqa: E402
from composer.data.spec import open_dataset  # noqa: E402
from composer.evaluate.embed import Embed, eval_transform  # noqa: E402
from composer.evaluate.probes import extract_features, knn_probe  # noqa: E402
from composer.train.runlog import open_run  # noqa: E402

FACTORS = {  # name: scene → class index
    "shape": lambda s: SHAPES.index(s.objects[0].shape),
    "texture": lambda s: TEXTURES.index(s.texture),
    "colour": lambda s: list(COLOURS).index(s.objects[0].colour),
    "small objects": lambda s: len(s.objects) - 1,
}


def factor_labels(dataset: ShapesDataset, n: int) -> dict[str, torch.Tensor]:
    """Per factor, the (n,) class index of the first n scenes."""
    scenes = [dataset.scene(i) for i in range(n)]
    return {name: torch.tensor([label(s) for s in scenes]) for name, label in FACTORS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a ptc train --out folder")
    p.add_argument("--data", default="shapes", help="a shapes data spec (default shapes)")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-val", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, val = open_dataset(args.data, "train"), open_dataset(args.data, "val")
    if not isinstance(train, ShapesDataset):
        raise SystemExit(f"probe_factors.py: {args.data!r} is not a shapes data spec")
    n_train, n_val = min(args.n_train, len(train)), min(args.n_val, len(val))
    bank, queries = factor_labels(train, n_train), factor_labels(val, n_val)
    subsets = torch.utils.data.Subset(train, range(n_train)), torch.utils.data.Subset(val, range(n_val))
    print(f"{'':8}" + "".join(f"{name:>15}" for name in FACTORS))
    for random_init in (True, False):
        model, _, _ = open_run(args.run, None, random_init)
        model.eval()
        embed, transform = Embed(model.embedding_module()), eval_transform(model)
        x_bank, _ = extract_features(embed, subsets[0], 256, transform, None)
        x_query, _ = extract_features(embed, subsets[1], 256, transform, None)
        scores = [knn_probe(x_bank, bank[f], x_query, queries[f], k=20) for f in FACTORS]
        print(f"{'init' if random_init else 'trained':8}" + "".join(f"{s:15.4f}" for s in scores), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
