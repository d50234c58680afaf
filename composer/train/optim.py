"""Parameter groups, the optimizers (SGD, LARS, AdamW), per-step hyper-parameters and gradient clipping.

Two groups at most: ``decay`` (weight decay from the schedule; LARS adapts it) and ``no_decay`` (the
parameters the graph's ``no_weight_decay`` rules select: no decay and, under LARS, no trust-ratio adaptation).
Frozen parameters (EMA teachers, fixed position tables) are left out altogether.
"""
from __future__ import annotations

import torch
from torch import nn

from composer.graph.train_section import MODULE_RULES, NDIM_RULES, TrainConfig

_NORMS = {
    "bn": (nn.modules.batchnorm._BatchNorm,),
    "ln": (nn.LayerNorm,),
    "gn": (nn.GroupNorm,),
}
_NORMS["norm"] = _NORMS["bn"] + _NORMS["ln"] + _NORMS["gn"] + (nn.modules.instancenorm._InstanceNorm,)


def split_parameters(model: nn.Module, rules: list[str]) -> tuple[list[tuple[str, nn.Parameter]], ...]:
    """Trainable ``(name, parameter)`` pairs split into ``(decay, no_decay)`` by the ``no_weight_decay`` rules.

    A parameter shared by two modules (tied weights) is listed once, under its first name.
    """
    owner: dict[int, nn.Module] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), module)
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if excluded(name, p, owner[id(p)], rules) else decay).append((name, p))
    return decay, no_decay


def excluded(name: str, p: torch.Tensor, module: nn.Module, rules: list[str]) -> bool:
    """Whether any rule selects ``p`` (named ``name``, owned by ``module``) for no weight decay."""
    for rule in rules:
        if rule in NDIM_RULES:
            if p.ndim <= 1:
                return True
        elif rule in MODULE_RULES:
            if isinstance(module, _NORMS[rule]):
                return True
        elif rule in name:
            return True
    return False


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) as MoCo v3 and SimCLR run it.

    For each parameter ``w`` of a group with ``lars_adapt`` (the decayed group)::

        d = g + wd·w;   q = η‖w‖/‖d‖ (1 if either norm is 0);   d ← q·d

    Parameters of other groups (``ndim≤1`` in MoCo v3, BN and biases in SimCLR) get ``d = g``: neither decay nor
    scaling. Then, with ``lr_in_momentum=False`` (MoCo v3 · moco/optimizer.py · LARS)::

        μ ← m·μ + d;   w ← w − lr·μ

    and with ``lr_in_momentum=True`` (SimCLR · lars_optimizer.py, ``classic_momentum``)::

        v ← m·v + lr·d;   w ← w − v

    The two agree while the lr is constant; they differ during warm-up and decay.

    Args:
        params: parameters or groups; a group key ``lars_adapt`` (default True) turns adaptation on or off.
        lr: learning rate.
        weight_decay: decay added to the gradient before the trust ratio (adapted groups only).
        momentum: m (0.9 in both repos).
        trust_coefficient: η (0.001 in both repos).
        lr_in_momentum: SimCLR's placement of the lr inside the momentum buffer.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001, lr_in_momentum: bool = False):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(f"LARS: need lr >= 0, weight_decay >= 0, 0 <= momentum < 1, trust_coefficient > 0; "
                             f"got {lr}, {weight_decay}, {momentum}, {trust_coefficient}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient,
                        lr_in_momentum=lr_in_momentum, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars_adapt"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    one = torch.ones_like(w_norm)
                    q = torch.where(w_norm > 0, torch.where(d_norm > 0, group["trust_coefficient"] * w_norm / d_norm,
                                                            one), one)
                    d = d.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                if group["lr_in_momentum"]:
                    mu.mul_(m).add_(d, alpha=lr)
                    p.sub_(mu)
                else:
                    mu.mul_(m).add_(d)
                    p.add_(mu, alpha=-lr)
        return loss


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over ``model``'s trainable parameters, in the ``decay``/``no_decay`` groups.

    Group lr and weight decay start at the schedules' step-0 values; ``set_hyperparameters`` updates them per step.
    Each group records ``decay`` (whether the weight-decay schedule applies) and ``names`` (for ``freeze`` rules).
    """
    decay, no_decay = split_parameters(model, cfg.no_weight_decay)
    if not decay and not no_decay:
        raise ValueError("the graph has no trainable parameters")
    groups = []
    for names_params, is_decay in ((decay, True), (no_decay, False)):
        if names_params:
            groups.append({"params": [p for _, p in names_params], "names": [n for n, _ in names_params],
                           "decay": is_decay, "weight_decay": 0.0})
    args = dict(cfg.optimizer_args)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=0.0, momentum=args["momentum"], nesterov=args["nesterov"])
    elif cfg.optimizer == "lars":
        for g in groups:
            g["lars_adapt"] = g["decay"]
        opt = LARS(groups, lr=0.0, momentum=args["momentum"], trust_coefficient=args["trust_coefficient"],
                   lr_in_momentum=args["lr_in_momentum"])
    else:
        opt = torch.optim.AdamW(groups, lr=0.0, betas=tuple(args["betas"]), eps=args["eps"])
    return opt


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's lr, and the weight decay of the decayed groups (DINO: wd schedule on group 0 only)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay if group.get("decay", True) else 0.0


def freeze_gradients(optimizer: torch.optim.Optimizer, parts: list[str]) -> int:
    """Drop the gradients of parameters whose name contains one of ``parts`` (DINO's
    cancel_gradients_last_layer: ``p.grad = None`` so no optimizer, momentum or decay touches them).
    Returns how many parameters were frozen."""
    count = 0
    for group in optimizer.param_groups:
        for name, p in zip(group["names"], group["params"]):
            if any(part in name for part in parts):
                p.grad = None
                count += 1
    return count


@torch.no_grad()
def clip_gradients(params: list[torch.Tensor], mode: str, max_norm: float) -> float:
    """Clip gradients and return the global gradient norm before clipping.

    ``global``: one norm over all gradients, scaled together (``clip_grad_norm_``; MAE, BEiT, GLIP).
    ``per_param``: each gradient scaled to norm ≤ ``max_norm`` on its own (DINO · utils.py · clip_gradients,
    ``clip_coef = max_norm / (norm + 1e-6)`` applied when below 1).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if mode == "global":
        return float(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm))
    norms = torch.stack([g.norm() for g in grads])
    for g, n in zip(grads, norms):
        coef = max_norm / (float(n) + 1e-6)
        if coef < 1:
            g.mul_(coef)
    return float(norms.norm())
