"""Schedules are values: a number, or a mapping naming a curve.

Graph syntax (used for block parameters such as EMA momentum and for the trainer's lr and weight decay)::

    momentum: 0.999                                   # constant (MoCo v1/v2)
    momentum: {cosine: [0.996, 1.0]}                  # BYOL/DINO/MoCo v3: end + (start-end)(1+cos(pi t/T))/2
    momentum: {linear: [0.996, 1.0]}                  # I-JEPA: start + (end-start) t/T
    teacher_temp: {linear: [0.04, 0.07], until: 30ep} # DINO: per epoch, np.linspace(start, end, 30), then end
    lr: {cosine: [1.5e-4, 0.0], warmup: 40ep}         # linear warm-up from `warmup_from` (default 0), then cosine
    lr: {steps: [0.03, 0.1], at: [120ep, 160ep]}       # MoCo v1: multiply by 0.1 at epochs 120 and 160
    lr: {cosine: [0.05, 0.0], per: epoch}             # SimSiam: the curve read once per epoch, held within it

``t`` is the optimizer step (0-based) and ``T`` the horizon: ``until`` when given, else the run's total steps.
Durations are steps (``1000``) or epochs (``30ep``). A duration in epochs evaluates the curve once per epoch,
as DINO's per-epoch teacher-temperature table does (``np.linspace`` includes both ends); a duration in steps
evaluates it per step, as I-JEPA's momentum iterator and every per-iteration lr schedule do.
``per: epoch`` holds the whole curve (warm-up included) at its value for the first step of each epoch, so a
cosine over E epochs takes the values ``end + (start − end)(1 + cos(π e/E))/2`` for e = 0 .. E − 1, as
SimSiam's ``adjust_learning_rate`` (called at the start of every epoch) does; ``per: step`` is the default.
"""
from __future__ import annotations

import dataclasses
import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ep|epochs?|steps?)?\s*$")
CURVES = ("constant", "cosine", "linear", "steps")

JSON_SCHEMA = {
    "oneOf": [
        {"type": "number"},
        {
            "type": "object",
            "properties": {
                "cosine": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                "linear": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                "steps": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                "constant": {"type": "number"},
                "at": {"type": "array", "items": {"type": ["integer", "string"]}},
                "until": {"type": ["integer", "string"]},
                "warmup": {"type": ["integer", "string"]},
                "warmup_from": {"type": "number"},
                "per": {"enum": ["step", "epoch"]},
            },
            "additionalProperties": False,
            "minProperties": 1,
        },
    ]
}


@dataclasses.dataclass(frozen=True)
class Duration:
    value: float
    epochs: bool

    @classmethod
    def parse(cls, text) -> "Duration":
        if isinstance(text, bool):
            raise ValueError(f"expected a duration such as 1000 or 30ep, got {text!r}")
        if isinstance(text, (int, float)):
            return cls(float(text), False)
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"expected a duration such as 1000 (steps) or 30ep (epochs), got {text!r}")
        return cls(float(m.group(1)), bool(m.group(2)) and m.group(2).startswith("ep"))

    def steps(self, steps_per_epoch: int) -> float:
        return self.value * steps_per_epoch if self.epochs else self.value


@dataclasses.dataclass
class Schedule:
    """A scalar as a function of the optimizer step. Call ``bind`` with the run's length, then ``at(step)``."""

    curve: str
    start: float
    end: float
    until: Duration | None = None
    warmup: Duration | None = None
    warmup_from: float = 0.0
    at_steps: tuple[Duration, ...] = ()
    per: str = "step"                  # "epoch": evaluated at the first step of each epoch (SimSiam's lr)
    total_steps: int | None = None
    steps_per_epoch: int = 1

    @classmethod
    def parse(cls, value) -> "Schedule":
        if isinstance(value, Schedule):
            return value
        if isinstance(value, bool):
            raise ValueError(f"expected a number or a schedule such as {{cosine: [0.996, 1.0]}}, got {value!r}")
        if isinstance(value, (int, float)):
            return cls("constant", float(value), float(value))
        if not isinstance(value, dict):
            raise ValueError(f"expected a number or a schedule such as {{cosine: [0.996, 1.0]}}, got {value!r}")
        curves = [k for k in value if k in CURVES]
        unknown = [k for k in value if k not in CURVES and k not in ("until", "warmup", "warmup_from", "at", "per")]
        if unknown or len(curves) != 1:
            raise ValueError(f"a schedule names exactly one of {', '.join(CURVES)} (with optional until, warmup, "
                             f"warmup_from, at, per); got keys {sorted(value)}")
        per = value.get("per", "step")
        if per not in ("step", "epoch"):
            raise ValueError(f"per: expected step or epoch, got {per!r}")
        curve = curves[0]
        ends = value[curve]
        if curve == "constant":
            ends = [ends, ends]
        if (not isinstance(ends, (list, tuple)) or len(ends) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in ends)):
            raise ValueError(f"{curve}: expected [start, end] numbers, got {ends!r}")
        at = tuple(Duration.parse(a) for a in value.get("at", ()))
        if curve == "steps" and not at:
            raise ValueError("steps: expected 'at: [..]', the milestones where the value is multiplied by end")
        return cls(curve, float(ends[0]), float(ends[1]),
                   until=Duration.parse(value["until"]) if "until" in value else None,
                   warmup=Duration.parse(value["warmup"]) if "warmup" in value else None,
                   warmup_from=float(value.get("warmup_from", 0.0)), at_steps=at, per=per)

    @property
    def is_constant(self) -> bool:
        return self.curve == "constant" and self.warmup is None

    def bind(self, total_steps: int, steps_per_epoch: int = 1) -> "Schedule":
        self.total_steps, self.steps_per_epoch = int(total_steps), max(int(steps_per_epoch), 1)
        return self

    def at(self, step: int) -> float:
        if self.is_constant:
            return self.start
        spe = self.steps_per_epoch
        if self.per == "epoch":
            step = step // spe * spe
        warm = self.warmup.steps(spe) if self.warmup else 0.0
        if step < warm:  # linear warm-up (MoCo v3, MAE, SimCLR: lr * step / warmup_steps)
            return self.warmup_from + (self.start - self.warmup_from) * step / warm
        if self.curve == "steps":  # multiply by `end` at each milestone passed
            return self.start * self.end ** sum(step >= a.steps(spe) for a in self.at_steps)
        horizon = self.until if self.until is not None else None
        if horizon is not None and horizon.epochs:
            # per-epoch table, both ends included (DINO's np.linspace over warm-up epochs)
            n = int(horizon.value)
            t, T = step // spe, max(n - 1, 1)
            if t >= n:
                return self.end
        else:
            T = horizon.steps(spe) if horizon is not None else self.total_steps
            if T is None:
                raise RuntimeError("schedule is not bound to a run length; call bind(total_steps, steps_per_epoch)")
            t = step
            if t >= T:
                return self.end
        t, T = t - warm, T - warm if not (horizon is not None and horizon.epochs) else T
        frac = min(max(t / T, 0.0), 1.0) if T > 0 else 1.0
        if self.curve == "linear":
            return self.start + (self.end - self.start) * frac
        return self.end + 0.5 * (self.start - self.end) * (1.0 + math.cos(math.pi * frac))

    def __call__(self, step: int) -> float:
        return self.at(step)
