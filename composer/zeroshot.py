"""zero-shot evaluation of a vision-language run: ptc zeroshot RUN [--data SPEC] [--template T] [--random-init]

- CLIP / SigLIP graphs (a ``loss.clip`` or ``loss.siglip`` node): zero-shot classification as CLIP evaluates it
  (openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb · zeroshot_classifier; open_clip
  zero_shot_classifier.py): each class name is put into the templates ("a photo of a {}."), the text embeddings
  are L2-normalised, averaged over templates and renormalised; an image is assigned the class of the largest
  cosine similarity. Top-1 accuracy on the validation split; chance is 1 / number of classes.
- GLIP graphs (a ``loss.token_focal`` node): phrase-grounding recall@1 at IoU 0.5 (Flickr30k entities' R@1 as
  GLIP reports it): for each annotated box, its phrase's score at every anchor is
  ``sqrt(mean over the phrase's tokens of sigmoid(logit) * sigmoid(centerness))`` (GLIP
  modeling/rpn/inference.py · ATSSPostProcessor, SCORE_AGG MEAN); the top-scoring anchor's decoded box, clipped
  to the image, is a hit when its IoU with the box is at least 0.5. The reference is a trivial detector that
  answers every phrase with one fixed box (the mean ground-truth box), and the untrained model.

The towers are found from the graph itself: the values feeding the loss's ``image`` and ``text`` ports are
recomputed node by node from substituted data-stage values (the deterministic eval transform of
``composer.probe`` for images, the graph's tokenizer on the prompts for text), so any wiring of encoders and
heads before the loss works.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision.ops import box_iou

from composer.data.collate import collate

TEMPLATES = ("a photo of a {}.",)


def _nodes_of(spec, kinds: tuple[str, ...]):
    return [n for n in spec.nodes.values() if n.kind == "call" and spec.blocks[n.block].kind in kinds]


def _edge_value(spec, edge, known: dict, blocks: dict):
    value = _node_value(spec, edge.src, known, blocks)
    return getattr(value, edge.field) if edge.field else value


def _node_value(spec, name: str, known: dict, blocks: dict):
    """The value of flow node ``name``, computing model-stage calls from ``known`` values (memoised there)."""
    if name in known:
        return known[name]
    node = spec.nodes[name]
    if node.kind == "alias":
        value = _edge_value(spec, node.inputs["value"], known, blocks)
    elif node.kind == "call" and node.stage == "model":
        value = blocks[node.block](**{p: _edge_value(spec, e, known, blocks) for p, e in node.inputs.items()})
    else:
        raise ValueError(f"zeroshot: the value {name!r} comes from the data stage and has no substitute")
    known[name] = value
    return value


def _data_source(spec, edge) -> str:
    """The data-stage node a model-stage edge reads, following a single chain of model-stage inputs."""
    name = edge.src
    while spec.nodes[name].stage == "model":
        inputs = list(spec.nodes[name].inputs.values())
        data = [e.src for e in inputs if spec.nodes[e.src].stage == "data"]
        name = data[0] if data else inputs[0].src
    return name


def _model_blocks(model) -> dict:
    return {name: getattr(model, name) for name in model.spec.blocks if hasattr(model, name)}


@torch.no_grad()
def zero_shot_accuracy(model, dataset, classes: list[str], templates=TEMPLATES, batch_size: int = 256,
                       device=None) -> float:
    """Top-1 zero-shot accuracy in [0, 1] of a CLIP-style graph on ``dataset`` (raw samples with labels)."""
    from composer.probe import eval_transform
    spec = model.spec
    losses = _nodes_of(spec, ("loss.clip", "loss.siglip"))
    if not losses:
        raise ValueError(f"zeroshot: graph {spec.name!r} has no loss.clip or loss.siglip node")
    if not classes:
        raise ValueError("zeroshot: the dataset names no classes")
    image_edge, text_edge = losses[0].inputs["image"], losses[0].inputs["text"]
    image_src, text_src = _data_source(spec, image_edge), _data_source(spec, text_edge)
    tokenizer = model.data_stage.graph_module.get_submodule(spec.nodes[text_src].block)
    device = device or next(model.parameters()).device
    blocks, was_training = _model_blocks(model), model.training
    model.eval()
    try:
        weights = []
        for name in classes:  # (C, E): per class, the renormalised mean of its templates' unit embeddings
            tokens = _to(tokenizer([t.format(name) for t in templates]), device)
            known = {text_src: tokens}
            emb = torch.nn.functional.normalize(_edge_value(spec, text_edge, known, blocks).float(), dim=-1)
            weights.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
        weights = torch.stack(weights)
        transform, correct, total = eval_transform(model), 0, 0
        for batch in DataLoader(dataset, batch_size, shuffle=False, collate_fn=collate):
            images = batch["image"]
            x = transform(images) if isinstance(images, Tensor) else torch.cat([transform(i[None]) for i in images])
            known = {image_src: x.to(device)}
            feats = torch.nn.functional.normalize(_edge_value(spec, image_edge, known, blocks).float(), dim=-1)
            pred = (feats @ weights.T).argmax(dim=1).cpu()
            correct += int((pred == batch["label"]).sum())
            total += len(pred)
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def _to(x, device):
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_to(v, device) for v in x))
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    return x


@torch.no_grad()
def grounding_recall(model, dataset, iou: float = 0.5, batch_size: int = 64, device=None) -> dict:
    """Phrase-grounding recall@1 of a GLIP-style graph, and the fixed-box reference, on ``dataset``.

    Returns ``{"recall": r, "prior_box_recall": p, "phrases": n}``; phrases cut off by the tokenizer are skipped.
    """
    from blocks.grounding import decode_boxes
    spec = model.spec
    focal, giou, centre = (_nodes_of(spec, (k,)) for k in ("loss.token_focal", "loss.giou", "loss.centerness"))
    targets = _nodes_of(spec, ("targets.atss",))
    if not (focal and giou and centre and targets):
        raise ValueError(f"zeroshot: graph {spec.name!r} lacks the GLIP nodes (loss.token_focal, loss.giou, "
                         f"loss.centerness, targets.atss)")
    device = device or next(model.parameters()).device
    was_training, stage_training = model.training, model.data_stage.training
    model.eval()
    model.data_stage.eval()  # no flip: the boxes and images stay as annotated
    hits, count, boxes_seen, pred_boxes = 0, 0, [], []
    try:
        for raw in DataLoader(dataset, batch_size, shuffle=False, collate_fn=collate):
            data = model.data_stage({k: raw[k] for k in spec.inputs})
            out = model(_to(data, device))
            known = {**data, **out.values}
            get = lambda node, port: _to(_edge_value(spec, node.inputs[port], known, {}), "cpu")  # noqa: E731
            logits, regression = get(focal[0], "logits").float(), get(giou[0], "regression").float()
            centerness, anchors = get(centre[0], "centerness").float(), get(giou[0], "anchors").float()
            gt_boxes, positive_map = get(targets[0], "boxes"), get(targets[0], "positive_map")
            size = float(getattr(model.data_stage.graph_module.get_submodule(targets[0].block), "size"))
            prob, quality = logits.sigmoid(), centerness.sigmoid()  # (B, A, T), (B, A)
            decoded = decode_boxes(regression, anchors[None]).clamp(0, size)  # (B, A, 4)
            for i, (boxes_i, map_i) in enumerate(zip(gt_boxes, positive_map)):
                for k in range(len(boxes_i)):
                    tokens = map_i[k] > 0
                    if not tokens.any():
                        continue
                    score = torch.sqrt(prob[i][:, tokens].mean(dim=1) * quality[i])  # (A,)
                    best = decoded[i, int(score.argmax())]
                    hits += int(box_iou(best[None], boxes_i[k:k + 1].float())[0, 0] >= iou)
                    count += 1
                    boxes_seen.append(boxes_i[k].float())
    finally:
        model.train(was_training)
        model.data_stage.train(stage_training)
    if count == 0:
        raise ValueError("zeroshot: no phrase with tokens in the evaluation data")
    seen = torch.stack(boxes_seen)
    prior = seen.mean(dim=0, keepdim=True)  # the one box a phrase-blind, image-blind detector would answer
    prior_hits = int((box_iou(prior, seen)[0] >= iou).sum())
    return {"recall": hits / count, "prior_box_recall": prior_hits / count, "phrases": count}


# ---------------------------------------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run folder written by ptc train")
    p.add_argument("--data", help="data spec (default: the run's training data); its validation split is used")
    p.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")
    p.add_argument("--random-init", action="store_true", help="evaluate the model at its initialisation")
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="prompt template with {} for the class name (repeatable; default 'a photo of a {}.')")
    p.add_argument("--n-val", type=int, default=1000, help="validation samples (default 1000)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a grounding hit (default 0.5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def run(args) -> int:
    import json

    from composer.cli import UserError
    from composer.data.spec import open_dataset
    from composer.eval_cli import load_run
    model, options, path = load_run(args.run_dir, args.checkpoint, args.random_init, args.device)
    spec = args.data or options.get("data") or "shapes"
    try:
        full = open_dataset(spec, "val")
        data = Subset(full, range(min(args.n_val, len(full)))) if args.n_val else full
        if _nodes_of(model.spec, ("loss.token_focal",)):
            result = {"task": "grounding", **grounding_recall(model, data, args.iou, device=args.device)}
        else:
            classes = list(getattr(full, "classes", []))
            templates = tuple(args.template or TEMPLATES)
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
