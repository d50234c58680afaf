"""zero-shot evaluation of a vision-language run: ptc zeroshot RUN [--data SPEC] [--template T | --templates SET]
[--random-init]

CLIP / SigLIP runs: zero-shot top-1 on the validation split with prompt templates; GLIP runs: phrase-grounding
recall@1 at an IoU. The evaluation itself is ``composer.evaluate.zeroshot``.
"""
from __future__ import annotations

import argparse
import json

from torch.utils.data import Subset

from composer.data.spec import open_dataset
from composer.evaluate.templates import TEMPLATE_SETS
from composer.evaluate.zeroshot import TEMPLATES, grounding_recall, is_grounding, zero_shot_accuracy
from composer.runtime.errors import UserError
from composer.train.runlog import open_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run folder written by ptc train")
    p.add_argument("--data", help="data spec (default: the run's training data); its validation split is used")
    p.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")
    p.add_argument("--random-init", action="store_true", help="evaluate the model at its initialisation")
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="prompt template with {} for the class name (repeatable; default 'a photo of a {}.')")
    p.add_argument("--templates", choices=sorted(TEMPLATE_SETS), default=None,
                   help="a named template set: imagenet80 (CLIP's 80 ImageNet prompts) or photo (the default)")
    p.add_argument("--n-val", type=int, default=1000, help="validation samples (default 1000)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a grounding hit (default 0.5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def run(args) -> int:
    model, options, path = open_run(args.run_dir, args.checkpoint, args.random_init, args.device)
    spec = args.data or options.get("data") or "shapes"
    try:
        full = open_dataset(spec, "val")
        data = Subset(full, range(min(args.n_val, len(full)))) if args.n_val else full
        if is_grounding(model.spec):
            result = {"task": "grounding", **grounding_recall(model, data, args.iou, device=args.device)}
        else:
            classes = list(getattr(full, "classes", []))
            if args.template and args.templates:
                raise ValueError("zeroshot: give --template or --templates, not both")
            templates = tuple(args.template or TEMPLATE_SETS.get(args.templates or "", TEMPLATES))
            acc = zero_shot_accuracy(model, data, classes, templates, device=args.device)
            result = {"task": "classification", "top1": acc, "chance": 1 / len(classes), "templates": templates}
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    where = "random initialisation" if args.random_init else str(path)
    result.update(data=spec, n_val=len(data), weights=where)
    if args.json:
        print(json.dumps(result))
    elif result["task"] == "grounding":
        print(f"grounding recall@1 (IoU {args.iou}) {result['recall']:.4f}  fixed-box reference "
              f"{result['prior_box_recall']:.4f}  ({result['phrases']} phrases in {len(data)} images of {spec}; "
              f"weights: {where})")
    else:
        shown = list(result["templates"]) if len(result["templates"]) <= 3 else f"{len(result['templates'])} templates"
        print(f"zero-shot top-1 {result['top1']:.4f}  chance {result['chance']:.4f}  ({len(data)} images of {spec}; "
              f"templates {shown}; weights: {where})")
    return 0
