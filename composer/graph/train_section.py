"""The ``train:`` section of a graph: how a method is optimised, read and validated once.

Grammar (every key is optional; defaults in brackets)::

    train:
      optimizer: sgd                          # sgd | lars | adamw, or {NAME: {ARGS}}        [sgd]
      #   sgd:   {momentum: 0.9, nesterov: false}                        torch.optim.SGD, coupled decay
      #   lars:  {momentum: 0.9, trust_coefficient: 0.001, lr_in_momentum: false}
      #          MoCo v3 (lr outside the momentum buffer) or, with lr_in_momentum: true, SimCLR's TF LARS;
      #          larc: true gives apex LARC's trust ratio η‖w‖/(‖g‖ + wd‖w‖ + 1e-8) (SwAV)
      #   adamw: {betas: [0.9, 0.999], eps: 1.0e-8}                      torch.optim.AdamW, decoupled decay
      lr: {cosine: [0.3, 0.0], warmup: 10ep}  # a number or a schedule value (composer.runtime.schedules), per step      [0.03]
      lr_scaling: linear                      # lr × B/256 (linear), × sqrt(B/256) (sqrt), or as is  [none]
      weight_decay: {cosine: [0.04, 0.4]}     # a number or a schedule; decayed groups only          [0]
      no_weight_decay: [ndim<=1, bias]        # rules selecting parameters without decay (below)     [[]]
      clip_grad: {global: 3.0}                # or {per_param: 3.0} (DINO); absent = no clipping
      accumulate: 1                           # micro-batches per optimizer step                     [1]
      freeze: {last_layer: 1ep}               # params whose name contains the key get no update     [{}]
      sync_bn: false                          # SyncBatchNorm over processes (needs CUDA)            [false]
      batch_size: 256                         # GLOBAL images per optimizer step (all processes)     [256]
      epochs: 100                             # or steps: N (one of the two)                         [100]
      param_groups:                           # parameters with their own settings (below)          [[]]
        - blocks: [predictor]                 #   SimSiam --fix-pred-lr: the predictor keeps the initial lr
          lr: 0.05
        - params: [ndim<=1]                   #   Barlow Twins: biases and BN at 0.024 x the lr, no decay,
          lr_factor: 0.024                    #   no LARS adaptation
          weight_decay: 0
          lars_adapt: false

``batch_size`` is the batch the papers quote (MoCo v3's 4096): each of W processes runs micro-batches of
``batch_size / (W · accumulate)`` images, so the same graph trains the same way on any number of processes.

Weight-decay rules (``no_weight_decay``), each selecting trainable parameters; a parameter matching any rule
is neither decayed nor, under LARS, trust-ratio adapted (MoCo v3 and SimCLR exclude the same set from both):

- ``ndim<=1`` (alias ``ndim<2``): biases, norm scales, scalars (MoCo v3 LARS, DINO, MAE, I-JEPA, open_clip);
- ``bn`` / ``ln`` / ``gn`` / ``norm``: every parameter of a BatchNorm / LayerNorm / GroupNorm / any of those
  module (SimCLR's ``batch_normalization``, open_clip's ``bn`` and ``ln``), found by module type, not name;
- any other word: parameters whose dotted name contains it (``bias`` for SimCLR, I-JEPA and open_clip;
  ``pos_embed``, ``cls_token`` for BEiT; ``logit_scale`` for open_clip).

The official repositories differ: MoCo v1/v2 ``[]``; MoCo v3 LARS ``[ndim<=1]``; SimCLR
``[bn, bias]``; DINO and MAE ``[ndim<=1, bias]``; BEiT ``[ndim<=1, bias, pos_embed, cls_token]``; open_clip
``[ndim<=1, bn, ln, bias, logit_scale]``.

Parameter groups (``param_groups``), a list; each entry selects trainable parameters and overrides settings:

- ``blocks: [NAME, ...]``: the parameters of these blocks of the graph;
- ``params: [RULE, ...]``: parameters any of these rules selects (the ``no_weight_decay`` rule language);
  with both keys a parameter must satisfy both; a parameter goes to the FIRST entry that selects it, and the
  parameters no entry selects form the ordinary groups;
- ``lr: VALUE``: the group's own lr, a number (a fixed lr: SimSiam's predictor under ``--fix-pred-lr`` keeps
  ``init_lr``, facebookresearch/simsiam · main_simsiam.py · adjust_learning_rate) or a schedule; or
  ``lr_factor: F``: F × the main lr at every step (Barlow Twins: biases and BN at ``0.0048 / 0.2 = 0.024`` ×
  the weights' lr, facebookresearch/barlowtwins · main.py · adjust_learning_rate). ``lr_scaling`` applies to both;
- ``weight_decay: VALUE``: the group's own decay (a number or a schedule); absent, the main ``weight_decay``
  applies and the ``no_weight_decay`` rules still exclude parameters inside the group;
- ``lars_adapt: true|false``: the LARS trust ratio for the group (LARS only; default: on exactly for decayed
  parameters, as without groups; on when the group gives its own ``weight_decay``);
- ``name: TEXT``: a label for logs and errors (default ``param_groups[i]``).
"""
from __future__ import annotations

import dataclasses
import math

from composer.runtime.errors import GraphError
from composer.runtime.schedules import Duration, Schedule

OPTIMIZERS = {
    "sgd": {"momentum": 0.9, "nesterov": False},
    "lars": {"momentum": 0.9, "trust_coefficient": 0.001, "lr_in_momentum": False, "larc": False},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8},
}
MODULE_RULES = ("bn", "ln", "gn", "norm")
NDIM_RULES = ("ndim<=1", "ndim<2")
KEYS = ("optimizer", "lr", "lr_scaling", "weight_decay", "no_weight_decay", "clip_grad", "accumulate", "freeze",
        "sync_bn", "batch_size", "epochs", "steps", "param_groups")
GROUP_KEYS = ("name", "blocks", "params", "lr", "lr_factor", "weight_decay", "lars_adapt")
BASE_BATCH = 256  # lr_scaling reference batch (MoCo v3, MAE, SimCLR linear, DINO: lr · B / 256)


@dataclasses.dataclass
class ParamGroup:
    """One ``param_groups`` entry: which parameters (``blocks`` and/or ``params`` rules) and their settings."""

    name: str
    blocks: list[str] = dataclasses.field(default_factory=list)
    params: list[str] = dataclasses.field(default_factory=list)
    lr: Schedule | None = None             # the group's own lr (a constant = a fixed lr); None: lr_factor × main lr
    lr_factor: float = 1.0
    weight_decay: Schedule | None = None   # None: the main schedule, no_weight_decay rules applying
    lars_adapt: bool | None = None         # None: adapt the decayed parameters
    loc: object = None                     # where the entry is written (errors found when building groups)

    def bind(self, total_steps: int, steps_per_epoch: int) -> None:
        for sched in (self.lr, self.weight_decay):
            if sched is not None:
                sched.bind(total_steps, steps_per_epoch)


@dataclasses.dataclass
class TrainConfig:
    """The validated ``train:`` section. ``lr`` and ``weight_decay`` are unbound ``Schedule``s."""

    optimizer: str = "sgd"
    optimizer_args: dict = dataclasses.field(default_factory=lambda: dict(OPTIMIZERS["sgd"]))
    lr: Schedule = dataclasses.field(default_factory=lambda: Schedule.parse(0.03))
    lr_scaling: str = "none"
    weight_decay: Schedule = dataclasses.field(default_factory=lambda: Schedule.parse(0.0))
    no_weight_decay: list[str] = dataclasses.field(default_factory=list)
    clip_grad: tuple[str, float] | None = None  # ("global" | "per_param", max_norm)
    accumulate: int = 1
    freeze: dict[str, Duration] = dataclasses.field(default_factory=dict)
    sync_bn: bool = False
    batch_size: int = 256
    epochs: int | None = 100
    steps: int | None = None
    param_groups: list[ParamGroup] = dataclasses.field(default_factory=list)

    def lr_factor(self) -> float:
        """The multiplier ``lr_scaling`` applies to the lr schedule for this ``batch_size``."""
        ratio = self.batch_size / BASE_BATCH
        return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]

    def micro_batch(self, world_size: int) -> int:
        """Images per process per forward: ``batch_size / (world_size · accumulate)`` (must divide)."""
        parts = world_size * self.accumulate
        if self.batch_size % parts:
            raise ValueError(f"train.batch_size {self.batch_size} is not divisible by {world_size} process(es) x "
                             f"accumulate {self.accumulate}")
        return self.batch_size // parts


def parse_train(spec) -> TrainConfig:
    """Read and validate ``spec.train``; a mistake raises ``GraphError`` pointing at its line."""
    return _Reader(spec).read()


class _Reader:
    def __init__(self, spec):
        self.spec, self.train = spec, dict(spec.train or {})

    def fail(self, key: str, message: str, expected: str | None = None, *sub) -> GraphError:
        return GraphError(f"train.{key}: {message}", self.spec.loc("train", key, *sub), expected=expected)

    def read(self) -> TrainConfig:
        from composer.blocks.registry import did_you_mean
        for key in self.train:
            if key not in KEYS:
                raise self.fail(key, f"unknown key{did_you_mean(key, KEYS)}", "one of " + ", ".join(KEYS))
        t, cfg = self.train, TrainConfig()
        if "optimizer" in t:
            cfg.optimizer, cfg.optimizer_args = self.optimizer(t["optimizer"])
        cfg.lr = self.schedule("lr", t.get("lr", 0.03))
        cfg.weight_decay = self.schedule("weight_decay", t.get("weight_decay", 0.0))
        cfg.lr_scaling = self.choice("lr_scaling", t.get("lr_scaling", "none"), ("none", "linear", "sqrt"))
        cfg.no_weight_decay = self.rules(t.get("no_weight_decay", []))
        cfg.clip_grad = self.clip(t["clip_grad"]) if t.get("clip_grad") is not None else None
        cfg.accumulate = self.positive_int("accumulate", t.get("accumulate", 1))
        cfg.freeze = self.freeze(t.get("freeze") or {})
        cfg.sync_bn = self.boolean("sync_bn", t.get("sync_bn", False))
        cfg.batch_size = self.positive_int("batch_size", t.get("batch_size", 256))
        if t.get("steps") is not None and t.get("epochs") is not None:
            raise self.fail("steps", "give either epochs or steps, not both", "one run length")
        if t.get("steps") is not None:
            cfg.steps, cfg.epochs = self.positive_int("steps", t["steps"]), None
        else:
            cfg.epochs = self.positive_int("epochs", t.get("epochs", 100))
        cfg.param_groups = self.groups(t.get("param_groups") or [], cfg.optimizer)
        return cfg

    def groups(self, value, optimizer: str) -> list[ParamGroup]:
        if not isinstance(value, list):
            raise self.fail("param_groups", f"got {value!r}", "a list of {blocks: [...], params: [...], lr: ...}")
        return [self.group(i, entry, optimizer) for i, entry in enumerate(value)]

    def group(self, i: int, entry, optimizer: str) -> ParamGroup:
        from composer.blocks.registry import did_you_mean
        key = f"param_groups[{i}]"

        def fail(message, expected=None, *sub):
            return GraphError(f"train.{key}{'.' + sub[0] if sub else ''}: {message}",
                              self.spec.loc("train", "param_groups", i, *sub), expected=expected)

        if not isinstance(entry, dict):
            raise fail(f"got {entry!r}", "a mapping such as {blocks: [predictor], lr: 0.05}")
        for k in entry:
            if k not in GROUP_KEYS:
                raise fail(f"unknown key {k!r}{did_you_mean(k, GROUP_KEYS)}", "one of " + ", ".join(GROUP_KEYS), k)
        group = ParamGroup(name=str(entry.get("name") or key), loc=self.spec.loc("train", "param_groups", i))
        blocks = entry.get("blocks", [])
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise fail(f"got {blocks!r}", "a list of block names such as [predictor]", "blocks")
        for b in blocks:
            if b not in self.spec.blocks:
                raise fail(f"{b!r} is not a block of this graph{did_you_mean(b, self.spec.blocks)}",
                           "names under 'blocks:'", "blocks")
        group.blocks = blocks
        if "params" in entry:
            try:
                group.params = self.rules(entry["params"], ("param_groups", i, "params"))
            except GraphError as e:
                raise fail(e.message.split(": ", 1)[1], e.expected, "params") from None
        if not group.blocks and not group.params:
            raise fail("selects no parameters", "'blocks: [NAME, ...]' and/or 'params: [RULE, ...]'")
        if "lr" in entry and "lr_factor" in entry:
            raise fail("give either lr (the group's own) or lr_factor (x the main lr), not both", None, "lr_factor")
        if "lr" in entry:
            group.lr = self.sub_schedule(entry["lr"], fail, "lr")
        if "lr_factor" in entry:
            f = entry["lr_factor"]
            if not _number(f) or f < 0:
                raise fail(f"must be a non-negative number, got {f!r}", "e.g. lr_factor: 0.024", "lr_factor")
            group.lr_factor = float(f)
        if "weight_decay" in entry:
            group.weight_decay = self.sub_schedule(entry["weight_decay"], fail, "weight_decay")
        if "lars_adapt" in entry:
            if not isinstance(entry["lars_adapt"], bool):
                raise fail(f"must be true or false, got {entry['lars_adapt']!r}", None, "lars_adapt")
            if optimizer != "lars":
                raise fail(f"only LARS adapts the lr per layer; the optimizer is {optimizer}",
                           "optimizer: lars, or remove lars_adapt", "lars_adapt")
            group.lars_adapt = entry["lars_adapt"]
        return group

    def sub_schedule(self, value, fail, key: str) -> Schedule:
        try:
            sched = Schedule.parse(value)
        except ValueError as e:
            raise fail(str(e), "a number or a schedule such as {cosine: [0.3, 0.0]}", key) from None
        if min(sched.start, sched.end, sched.warmup_from) < 0:
            raise fail(f"must not be negative, got {value!r}", None, key)
        return sched

    def optimizer(self, value) -> tuple[str, dict]:
        name, args = (value, {}) if isinstance(value, str) else (None, None)
        if isinstance(value, dict) and len(value) == 1:
            name, args = next(iter(value.items()))
            args = {} if args is None else args
        if name not in OPTIMIZERS or not isinstance(args, dict):
            raise self.fail("optimizer", f"got {value!r}", "sgd, lars or adamw, or {NAME: {ARGS}} such as "
                            "{lars: {momentum: 0.9}}")
        merged = dict(OPTIMIZERS[name])
        for key, arg in args.items():
            if key not in merged:
                raise self.fail("optimizer", f"{name} takes no argument {key!r}", ", ".join(merged), name, key)
            merged[key] = self.optimizer_arg(name, key, arg)
        return name, merged

    def optimizer_arg(self, name: str, key: str, arg):
        default = OPTIMIZERS[name][key]
        if isinstance(default, bool):
            return self.boolean(f"optimizer.{name}.{key}", arg, ("optimizer", name, key))
        if isinstance(default, tuple):
            ok = isinstance(arg, (list, tuple)) and len(arg) == 2 and all(_number(a) and 0 <= a < 1 for a in arg)
            if not ok:
                raise self.fail("optimizer", f"{name}.{key} must be two numbers in [0, 1), got {arg!r}",
                                "e.g. betas: [0.9, 0.95]", name, key)
            return (float(arg[0]), float(arg[1]))
        if not _number(arg) or arg < 0 or (key == "momentum" and arg >= 1):
            raise self.fail("optimizer", f"{name}.{key} must be a non-negative number"
                            f"{' below 1' if key == 'momentum' else ''}, got {arg!r}", None, name, key)
        return float(arg)

    def schedule(self, key: str, value) -> Schedule:
        try:
            sched = Schedule.parse(value)
        except ValueError as e:
            raise self.fail(key, str(e), "a number or a schedule such as {cosine: [0.3, 0.0], warmup: 10ep}")
        if min(sched.start, sched.end, sched.warmup_from) < 0:
            raise self.fail(key, f"must not be negative, got {value!r}")
        return sched

    def choice(self, key: str, value, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(key, f"got {value!r}", "one of " + ", ".join(options))
        return value

    def rules(self, value, where: tuple = ("no_weight_decay",)) -> list[str]:
        key, sub = where[0], where[1:]
        if not isinstance(value, list) or not all(isinstance(r, str) and r.strip() for r in value):
            raise self.fail(key, f"got {value!r}", "a list of rules such as [ndim<=1, bias]", *sub)
        rules = [r.strip() for r in value]
        for i, rule in enumerate(rules):
            if rule.startswith("ndim") and rule not in NDIM_RULES:
                raise self.fail(key, f"unknown rule {rule!r}", "ndim<=1 (alias ndim<2)", *sub, i)
            if not rule.startswith("ndim") and not rule.replace("_", "").replace(".", "").isalnum():
                raise self.fail(key, f"rule {rule!r} is not a name fragment", "ndim<=1, bn, ln, "
                                "gn, norm, or part of a parameter name such as bias or pos_embed", *sub, i)
        return rules

    def clip(self, value) -> tuple[str, float]:
        if (not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("global", "per_param")
                or not _number(next(iter(value.values()))) or next(iter(value.values())) <= 0):
            raise self.fail("clip_grad", f"got {value!r}", "{global: MAX_NORM} (MAE, BEiT: 3.0) or "
                            "{per_param: MAX_NORM} (DINO: 3.0), MAX_NORM > 0")
        mode, norm = next(iter(value.items()))
        return mode, float(norm)

    def freeze(self, value) -> dict[str, Duration]:
        if not isinstance(value, dict):
            raise self.fail("freeze", f"got {value!r}", "{NAME_PART: DURATION} such as {last_layer: 1ep}")
        out = {}
        for key, dur in value.items():
            try:
                out[str(key)] = Duration.parse(dur)
            except ValueError as e:
                raise self.fail("freeze", str(e), "a duration such as 1ep or 500 (steps)", key)
        return out

    def positive_int(self, key: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"must be a positive integer, got {value!r}")
        return value

    def boolean(self, key: str, value, path: tuple = ()) -> bool:
        if not isinstance(value, bool):
            raise GraphError(f"train.{key}: must be true or false, got {value!r}",
                             self.spec.loc("train", *(path or (key,))))
        return value


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
