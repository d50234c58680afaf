"""Parameter groups, the optimizers (SGD, LARS, AdamW), per-step hyper-parameters and gradient clipping.

Without ``param_groups`` in the graph: two groups at most, ``decay`` (weight decay from the schedule; LARS
adapts it) and ``no_decay`` (the parameters the graph's ``no_weight_decay`` rules select: no decay and, under
LARS, no trust-ratio adaptation). Each ``param_groups`` entry adds its own group(s) in front, with its own lr
(fixed or a schedule) or lr factor, weight decay and LARS adaptation. Frozen parameters (EMA teachers, fixed
position tables) are left out altogether.

Every optimizer group records plain values only (so checkpoints stay loadable): ``names``, ``decay`` (the main
weight-decay schedule applies), ``lr_factor`` (× the main lr), ``rule`` (index of its ``param_groups`` entry,
-1 for none), ``label`` and, under LARS, ``lars_adapt``.
"""
from __future__ import annotations

import torch
from torch import nn

from composer.graph.train_section import MODULE_RULES, NDIM_RULES, ParamGroup, TrainConfig
from composer.runtime.errors import GraphError

_NORMS = {
    "bn": (nn.modules.batchnorm._BatchNorm,),
    "ln": (nn.LayerNorm,),
    "gn": (nn.GroupNorm,),
}
_NORMS["norm"] = _NORMS["bn"] + _NORMS["ln"] + _NORMS["gn"] + (nn.modules.instancenorm._InstanceNorm,)


def _owners(model: nn.Module) -> dict[int, nn.Module]:
    owner: dict[int, nn.Module] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), module)
    return owner


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable ``(name, parameter)`` pairs; a parameter shared by two modules is listed once, first name."""
    out, seen = [], set()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def split_parameters(model: nn.Module, rules: list[str], named=None) -> tuple[list[tuple[str, nn.Parameter]], ...]:
    """Trainable ``(name, parameter)`` pairs (or those of ``named``) split into ``(decay, no_decay)`` by the
    ``no_weight_decay`` rules. A parameter shared by two modules (tied weights) is listed once, first name."""
    owner = _owners(model)
    decay, no_decay = [], []
    for name, p in (_trainable(model) if named is None else named):
        (no_decay if excluded(name, p, owner[id(p)], rules) else decay).append((name, p))
    return decay, no_decay


def selects(group: ParamGroup, name: str, p: torch.Tensor, module: nn.Module) -> bool:
    """Whether the ``param_groups`` entry selects parameter ``name``: in one of its ``blocks`` (when given) and
    matched by one of its ``params`` rules (when given)."""
    in_blocks = not group.blocks or any(name == b or name.startswith(b + ".") for b in group.blocks)
    return in_blocks and (not group.params or excluded(name, p, module, group.params))


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

    Parameters of other groups (``ndim≤1`` in MoCo v3, BN and biases in SimCLR) get ``d = g + wd·w`` with no
    scaling; ``build_optimizer`` gives them ``wd = 0`` unless a ``param_groups`` entry decays them (Barlow Twins
    filters decay and adaptation separately: facebookresearch/barlowtwins · main.py · LARS). Then, with ``lr_in_momentum=False`` (MoCo v3 · moco/optimizer.py · LARS)::

        μ ← m·μ + d;   w ← w − lr·μ

    and with ``lr_in_momentum=True`` (SimCLR · lars_optimizer.py, ``classic_momentum``)::

        v ← m·v + lr·d;   w ← w − v

    The two agree while the lr is constant; they differ during warm-up and decay.

    With ``larc=True`` the trust ratio is apex's ``LARC(clip=False)`` as SwAV wraps its SGD (main_swav.py;
    apex/parallel/LARC.py · LARC.step): ``q = η‖w‖/(‖g‖ + wd·‖w‖ + 1e-8)``, the norms of the gradient and of the
    weights taken separately, then ``d = q·(g + wd·w)`` (``d = g`` if either norm is 0) and torch SGD's ``μ ← m·μ + d; w ← w − lr·μ``
    (use it with ``lr_in_momentum=False``).

    Args:
        params: parameters or groups; a group key ``lars_adapt`` (default True) turns adaptation on or off.
        lr: learning rate.
        weight_decay: decay added to the gradient before the trust ratio (adapted groups only).
        momentum: m (0.9 in both repos).
        trust_coefficient: η (0.001 in both repos).
        lr_in_momentum: SimCLR's placement of the lr inside the momentum buffer.
        larc: apex LARC's trust ratio (SwAV) instead of η‖w‖/‖g + wd·w‖.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001, lr_in_momentum: bool = False, larc: bool = False):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(f"LARS: need lr >= 0, weight_decay >= 0, 0 <= momentum < 1, trust_coefficient > 0; "
                             f"got {lr}, {weight_decay}, {momentum}, {trust_coefficient}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient,
                        lr_in_momentum=lr_in_momentum, lars_adapt=True, larc=larc)
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
                if group["lars_adapt"] and group["larc"]:  # the norms of g and wd·w summed (apex LARC)
                    w_norm, g_norm = torch.norm(p), torch.norm(d)
                    q = group["trust_coefficient"] * w_norm / (g_norm + group["weight_decay"] * w_norm + 1e-8)
                    # a zero weight or gradient: apex leaves the raw gradient, without decay
                    d = torch.where((w_norm > 0) & (g_norm > 0), d.add(p, alpha=group["weight_decay"]).mul(q), d)
                elif group["weight_decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"] and not group["larc"]:
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


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer's groups: those of each ``param_groups`` entry first (split by ``no_weight_decay`` unless
    the entry sets its own ``weight_decay``), then ``decay`` and ``no_decay`` for the rest; empty ones dropped."""
    owner, remaining = _owners(model), _trainable(model)
    if not remaining:
        raise ValueError("the graph has no trainable parameters")
    groups = []

    def add(named, decay: bool, rule: int, label: str, factor: float = 1.0, adapt: bool | None = None):
        if named:
            groups.append({"params": [p for _, p in named], "names": [n for n, _ in named], "decay": decay,
                           "weight_decay": 0.0, "rule": rule, "label": label, "lr_factor": factor,
                           "lars_adapt": decay if adapt is None else adapt})

    for i, rule in enumerate(cfg.param_groups):
        mine = [(n, p) for n, p in remaining if selects(rule, n, p, owner[id(p)])]
        if not mine:
            raise GraphError(f"train.{rule.name}: selects no trainable parameter (blocks {rule.blocks or 'any'}, "
                             f"params {rule.params or 'any'}; an earlier entry may have taken them)", rule.loc,
                             expected="an entry that matches parameters of the graph's trainable blocks")
        taken = {id(p) for _, p in mine}
        remaining = [(n, p) for n, p in remaining if id(p) not in taken]
        if rule.weight_decay is not None:  # its own decay for all its parameters
            add(mine, False, i, rule.name, rule.lr_factor, True if rule.lars_adapt is None else rule.lars_adapt)
        else:
            decay, no_decay = split_parameters(model, cfg.no_weight_decay, mine)
            add(decay, True, i, rule.name, rule.lr_factor, rule.lars_adapt)
            add(no_decay, False, i, rule.name + " (no decay)", rule.lr_factor, rule.lars_adapt)
    decay, no_decay = split_parameters(model, cfg.no_weight_decay, remaining)
    add(decay, True, -1, "decay")
    add(no_decay, False, -1, "no_decay")
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over ``model``'s trainable parameters, in the groups of ``parameter_groups``.

    Group lr and weight decay start at 0; ``set_hyperparameters`` sets them per step.
    Each group records ``decay`` (whether the weight-decay schedule applies) and ``names`` (for ``freeze`` rules).
    """
    groups = parameter_groups(model, cfg)
    args = dict(cfg.optimizer_args)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=0.0, momentum=args["momentum"], nesterov=args["nesterov"])
    elif cfg.optimizer == "lars":
        opt = LARS(groups, lr=0.0, momentum=args["momentum"], trust_coefficient=args["trust_coefficient"],
                   lr_in_momentum=args["lr_in_momentum"], larc=args["larc"])
    else:
        opt = torch.optim.AdamW(groups, lr=0.0, betas=tuple(args["betas"]), eps=args["eps"])
    return opt


def group_values(cfg: TrainConfig, step: int) -> list[tuple[float | None, float | None]]:
    """``(lr, weight_decay)`` of each ``param_groups`` entry at ``step``: its own lr schedule × ``lr_scaling``
    and its own decay, ``None`` where the entry follows the main schedule. The schedules must be bound."""
    return [(g.lr.at(step) * cfg.lr_factor() if g.lr is not None else None,
             g.weight_decay.at(step) if g.weight_decay is not None else None) for g in cfg.param_groups]


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float,
                        own: list[tuple[float | None, float | None]] | None = None) -> None:
    """Set each group's lr and weight decay for one step.

    ``lr``/``weight_decay`` are the main schedules' values (lr already scaled); ``own`` is ``group_values`` for
    the ``param_groups`` entries. A group takes its entry's own lr if it has one, else ``lr × lr_factor``; its
    entry's own decay if it has one, else ``weight_decay`` when decayed and 0 otherwise (DINO: the wd schedule
    on the regularised group only).
    """
    for group in optimizer.param_groups:
        rule = group.get("rule", -1)
        own_lr, own_wd = own[rule] if own and rule >= 0 else (None, None)
        group["lr"] = own_lr if own_lr is not None else lr * group.get("lr_factor", 1.0)
        if own_wd is not None:
            group["weight_decay"] = own_wd
        else:
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
