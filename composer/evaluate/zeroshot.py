"""Zero-shot evaluation of a vision-language model (``ptc zeroshot``).

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
``composer.evaluate.embed`` for images, the graph's tokenizer on the prompts for text), so any wiring of encoders and
heads before the loss works.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from composer.blocks.boxes import decode_boxes
from composer.data.collate import collate
from composer.evaluate.embed import eval_transform

TEMPLATES = ("a photo of a {}.",)


def is_grounding(spec) -> bool:
    """A GLIP-style graph: a ``loss.token_focal`` node scores anchors against tokens."""
    return bool(_nodes_of(spec, ("loss.token_focal",)))


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
    hits, count, boxes_seen = 0, 0, []
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

