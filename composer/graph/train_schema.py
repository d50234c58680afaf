"""JSON Schema of the ``train:`` section (part of ``ptc schema``): every key with its type and meaning.

The grammar and its checks are ``composer.graph.train_section``; this schema serves editors (completion, hover
text) and mirrors the same keys, defaults and choices, read from that module so the two cannot drift.
"""
from __future__ import annotations

from composer.graph.train_section import GROUP_KEYS, KEYS, MODULE_RULES, NDIM_RULES, OPTIMIZERS
from composer.runtime.schedules import JSON_SCHEMA as SCHEDULE

_DURATION = {"type": ["integer", "string"], "description": "steps (1000) or epochs (30ep)"}
_RULES = {"type": "array", "items": {"type": "string"},
          "description": "rules selecting parameters: " + " / ".join(NDIM_RULES) + " (biases, norm scales, scalars); "
          + ", ".join(MODULE_RULES) + " (every parameter of such a norm module, by type); any other word: "
          "parameters whose dotted name contains it (bias, pos_embed, cls_token, logit_scale)"}


def _schedule(description: str) -> dict:
    return {**SCHEDULE, "description": description}


def _optimizer() -> dict:
    def args(name):
        props = {}
        for key, default in OPTIMIZERS[name].items():
            if isinstance(default, bool):
                props[key] = {"type": "boolean", "default": default}
            elif isinstance(default, tuple):
                props[key] = {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                              "minItems": 2, "maxItems": 2, "default": list(default)}
            else:
                props[key] = {"type": "number", "minimum": 0, "default": default}
        props.get("momentum", {}).update(exclusiveMaximum=1)
        return {"type": ["object", "null"], "properties": props, "additionalProperties": False}

    return {"description": "sgd (torch.optim.SGD, coupled decay), lars (layer-wise trust ratio; lr_in_momentum: "
                           "SimCLR's TF placement, else MoCo v3's; larc: apex LARC's trust ratio, SwAV), adamw (decoupled decay); a name or "
                           "{NAME: {ARGS}}",
            "default": "sgd",
            "anyOf": [{"enum": list(OPTIMIZERS)},
                      {"type": "object", "minProperties": 1, "maxProperties": 1,
                       "properties": {name: args(name) for name in OPTIMIZERS}, "additionalProperties": False}]}


def _param_group() -> dict:
    props = {
        "name": {"type": "string", "description": "a label for logs and errors (default param_groups[i])"},
        "blocks": {"type": "array", "items": {"type": "string"},
                   "description": "the parameters of these blocks of the graph"},
        "params": {**_RULES, "description": "parameters any of these rules selects; with 'blocks', both must hold. "
                   + _RULES["description"]},
        "lr": _schedule("the group's own lr: a number (a fixed lr, SimSiam's predictor) or a schedule; "
                        "lr_scaling applies"),
        "lr_factor": {"type": "number", "minimum": 0, "default": 1.0,
                      "description": "the group's lr = lr_factor x the main lr at every step (Barlow Twins biases "
                                     "and BN: 0.024)"},
        "weight_decay": _schedule("the group's own weight decay (a number or a schedule); absent: the main "
                                  "weight_decay, no_weight_decay rules applying"),
        "lars_adapt": {"type": "boolean", "description": "LARS trust ratio on or off for the group (optimizer: "
                                                         "lars only); default on for decayed parameters"},
    }
    assert set(props) == set(GROUP_KEYS)
    return {"type": "object", "properties": props, "additionalProperties": False,
            "not": {"required": ["lr", "lr_factor"]},
            "anyOf": [{"required": ["blocks"]}, {"required": ["params"]}]}


def train_schema() -> dict:
    props = {
        "optimizer": _optimizer(),
        "lr": _schedule("learning rate per optimizer step: a number or a schedule such as "
                        "{cosine: [0.3, 0.0], warmup: 10ep} (default 0.03)"),
        "lr_scaling": {"enum": ["none", "linear", "sqrt"], "default": "none",
                       "description": "multiply the lr by batch_size/256 (linear) or sqrt(batch_size/256)"},
        "weight_decay": _schedule("weight decay of the decayed parameters: a number or a schedule (default 0)"),
        "no_weight_decay": {**_RULES, "default": [],
                            "description": "parameters without decay (and, under LARS, without trust-ratio "
                                           "adaptation): " + _RULES["description"]},
        "clip_grad": {"type": ["object", "null"], "minProperties": 1, "maxProperties": 1,
                      "properties": {"global": {"type": "number", "exclusiveMinimum": 0},
                                     "per_param": {"type": "number", "exclusiveMinimum": 0}},
                      "additionalProperties": False,
                      "description": "{global: MAX_NORM} (one norm over all gradients: MAE, BEiT) or {per_param: "
                                     "MAX_NORM} (each parameter's own norm: DINO); absent: no clipping"},
        "accumulate": {"type": "integer", "minimum": 1, "default": 1,
                       "description": "micro-batches per optimizer step"},
        "freeze": {"type": ["object", "null"], "additionalProperties": _DURATION, "default": {},
                   "description": "{NAME_PART: DURATION}: parameters whose name contains NAME_PART get no update "
                                  "for DURATION (DINO: {last_layer: 1ep})"},
        "sync_bn": {"type": "boolean", "default": False,
                    "description": "SyncBatchNorm over processes (needs CUDA)"},
        "batch_size": {"type": "integer", "minimum": 1, "default": 256,
                       "description": "GLOBAL images per optimizer step over all processes and micro-batches"},
        "epochs": {"type": ["integer", "null"], "minimum": 1, "default": 100,
                   "description": "run length in epochs (or steps, not both)"},
        "steps": {"type": ["integer", "null"], "minimum": 1, "description": "run length in optimizer steps"},
        "param_groups": {"type": ["array", "null"], "items": _param_group(), "default": [],
                         "description": "parameters with their own lr (fixed or a factor), weight decay and LARS "
                                        "adaptation; a parameter goes to the first entry that selects it"},
    }
    assert set(props) == set(KEYS)
    return {"type": "object", "properties": props, "additionalProperties": False,
            "description": "how the method is optimised (docs/training.md)"}
