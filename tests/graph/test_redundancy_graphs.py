"""Barlow Twins and VICReg (graphs/barlow_twins.yaml, graphs/vicreg.yaml): the loss programs of the graphs against
lightly 1.6.0 and the official forward written out here, the heads' bias and BatchNorm layout, the declared
collapse guards, and LARS with the official parameter groups and lr schedule over several steps.

Neither method has state updated outside the optimizer (no EMA teacher, queue or centre): the optimizer test is
their only recursion."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import composer
from composer.blocks.expr.block import ExpressionLoss, ExpressionOp
from composer.graph.collapse import declared_guards
from composer.graph.train_section import parse_train
from composer.train.optim import build_optimizer, group_values, set_hyperparameters

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
LOSS = {"barlow_twins.yaml": ("barlow_twins", "projector"), "vicreg.yaml": ("vicreg", "expander")}


def _program(graph: str) -> str:
    name, _ = LOSS[graph]
    return composer.load(GRAPHS / graph).blocks[name].params["expr"]


def _expression(graph: str) -> ExpressionOp:
    """The graph's loss program, evaluated in the inputs' dtype (float64 here). The graph's ``loss.expr`` block
    runs the same program in float32: ``test_the_loss_block_in_float32`` checks that one."""
    return ExpressionOp(expr=_program(graph))


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """barlowtwins · main.py · off_diagonal (and vicreg · main_vicreg.py · off_diagonal)."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def official_barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """barlowtwins · main.py · BarlowTwins.forward on one process (the all_reduce is then the identity)."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype).train()
    c = bn(z1).T @ bn(z2)
    c = c / z1.shape[0]   # c.div_(args.batch_size): the global batch
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diag + lambd * off_diagonal(c).pow(2).sum()


def official_vicreg(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """vicreg · main_vicreg.py · VICReg.forward on one process (sim 25, std 25, cov 1)."""
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
    return 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss


def _value_and_grad(fn, z: torch.Tensor):
    leaf = z.clone().requires_grad_(True)
    loss = fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("scale", [1.0, 0.05])   # 0.05: std below 1, so VICReg's variance hinge is active
def test_loss_programs_equal_lightly_and_the_official_forward(scale):
    from lightly.loss import BarlowTwinsLoss, VICRegLoss
    gen = torch.Generator().manual_seed(7)
    z = scale * torch.randn(2, 12, 6, generator=gen, dtype=torch.float64)
    z[1] += 0.8 * z[0]   # correlated views, as two augmentations of one image give
    cases = {
        "barlow_twins.yaml": (official_barlow_twins, BarlowTwinsLoss(lambda_param=0.0051)),
        "vicreg.yaml": (official_vicreg, VICRegLoss()),   # defaults 25, 25, 1, eps 1e-4
    }
    for graph, (official, lightly_loss) in cases.items():
        loss = _expression(graph)
        ours = _value_and_grad(lambda v: loss(z=v), z)
        for what, fn in (("official", lambda v: official(v[0], v[1])), ("lightly", lambda v: lightly_loss(v[0], v[1]))):
            ref = _value_and_grad(fn, z)
            _close(ours[0], ref[0], f"{graph} value vs {what}")
            _close(ours[1], ref[1], f"{graph} gradient vs {what}")
        assert ours[1].abs().sum() > 0
    # lightly's default lambda (0.005) is not the official 0.0051, and the tolerance sees the difference
    ours = _expression("barlow_twins.yaml")(z=z)
    assert abs(ours - BarlowTwinsLoss()(z[0], z[1])) > 1e-6


@pytest.mark.parametrize("graph", ["barlow_twins.yaml", "vicreg.yaml"])
def test_the_loss_block_in_float32(graph):
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(2, 16, 8, generator=gen, dtype=torch.float64)
    official = official_barlow_twins if graph == "barlow_twins.yaml" else official_vicreg
    block = ExpressionLoss(expr=_program(graph))
    ours = _value_and_grad(lambda v: block(z=v), z.float())
    ref = _value_and_grad(lambda v: official(v[0], v[1]), z)
    torch.testing.assert_close(ours[0].double(), ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1].double(), ref[1], rtol=1e-4, atol=1e-6)


def test_barlow_twins_loss_on_hand_computed_matrices():
    # z = [I; -I] (8 x 4): every column has mean 0 and biased variance 2/8, and z^T z = 2 I, so with equal views
    # c = 2 I / (8 (1/4 + 1e-5)): a diagonal of 0.25 / (0.25 + 1e-5) (standardize's eps) and nothing off it
    eye = torch.eye(4, dtype=torch.float64)
    z = torch.cat([eye, -eye])
    loss = _expression("barlow_twins.yaml")
    cii = 0.25 / (0.25 + 1e-5)
    _close(loss(z=torch.stack([z, z])), torch.tensor(4 * (cii - 1) ** 2, dtype=torch.float64), "orthogonal design")
    z[:, 0] = 3.0   # a constant unit standardises to 0: c_00 = 0 costs (0 - 1)^2 = 1
    _close(loss(z=torch.stack([z, z])), torch.tensor(1 + 3 * (cii - 1) ** 2, dtype=torch.float64), "a constant unit")
    # the off-diagonal weight: views [I; -I] and the same with columns 0 and 1 swapped -> c_01 = c_10 = cii
    z[:, 0] = torch.cat([eye, -eye])[:, 0]
    swapped = z[:, [1, 0, 2, 3]]
    expected = 2 * (0 - 1) ** 2 + 2 * (cii - 1) ** 2 + 0.0051 * 2 * cii ** 2
    _close(loss(z=torch.stack([z, swapped])), torch.tensor(expected, dtype=torch.float64), "swapped units")


@pytest.mark.parametrize("graph, bias, last_bias", [("barlow_twins.yaml", False, False), ("vicreg.yaml", True, False)])
def test_heads_follow_the_official_layout(graph, bias, last_bias):
    # barlowtwins · main.py · BarlowTwins.__init__; vicreg · main_vicreg.py · Projector
    _, head = LOSS[graph]
    full = composer.load(GRAPHS / graph)
    assert full.blocks[head].params["dims"] == [2048, 8192, 8192, 8192]
    torch.manual_seed(0)
    model = composer.build(composer.load(GRAPHS / graph, None, "tiny"), check=False)
    layers = list(getattr(model, head).net)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [m.bias is not None for m in linears] == [bias, bias, last_bias]
    assert all(m.affine for m in layers if isinstance(m, nn.BatchNorm1d))
    assert getattr(model, head).views == "separate" and model.encoder.views == "separate"


@pytest.mark.parametrize("graph", ["barlow_twins.yaml", "vicreg.yaml"])
def test_the_losses_declare_their_collapse_guard(graph):
    name, _ = LOSS[graph]
    for variant in (None, "tiny"):
        spec = composer.load(GRAPHS / graph, None, variant)
        assert name in declared_guards(spec)
        assert composer.check(spec, dry_run=False).warnings == []


# ---------------------------------------------------------------------------------------------- optimizer
EPOCHS_RUN, SPE = 1000, 3          # the graphs' 1000 epochs at 3 steps an epoch: warm-up = 30 steps
STEPS = [0, 1, 17, 29, 30, 31, 1500, 2999]


def official_lr(step: int, batch_size: int, base: float) -> float:
    """barlowtwins · main.py · adjust_learning_rate (base 1 there, then × 0.2 and × 0.0048 per group);
    vicreg · main_vicreg.py · adjust_learning_rate (base_lr 0.2)."""
    max_steps, warmup_steps = EPOCHS_RUN * SPE, 10 * SPE
    base_lr = base * batch_size / 256
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    step, max_steps = step - warmup_steps, max_steps - warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
    return base_lr * q + base_lr * 0.001 * (1 - q)


@torch.no_grad()
def official_lars_step(params, lrs, states, wd=1e-6, momentum=0.9, eta=0.001):
    """barlowtwins · main.py · LARS.step (= vicreg · main_vicreg.py · LARS.step) with exclude_bias_and_norm as
    both filters: ndim == 1 parameters get neither decay nor adaptation."""
    for p, lr, mu in zip(params, lrs, states):
        dp = p.grad
        if p.ndim != 1:
            dp = dp.add(p, alpha=wd)
            param_norm, update_norm = torch.norm(p), torch.norm(dp)
            one = torch.ones_like(param_norm)
            q = torch.where(param_norm > 0., torch.where(update_norm > 0, eta * param_norm / update_norm, one), one)
            dp = dp.mul(q)
        mu.mul_(momentum).add_(dp)
        p.add_(mu, alpha=-lr)


@pytest.mark.parametrize("graph", ["barlow_twins.yaml", "vicreg.yaml"])
def test_lars_groups_and_lr_schedule_follow_the_official_step(graph):
    cfg = parse_train(composer.load(GRAPHS / graph))   # the full-size train section: batch 2048, 1000 epochs
    assert cfg.batch_size == 2048
    torch.manual_seed(0)
    model = composer.build(composer.load(GRAPHS / graph, None, "tiny"), check=False)   # small parameters, same names
    ours = dict(model.named_parameters())
    theirs = {n: p.detach().clone() for n, p in ours.items()}
    states = {n: torch.zeros_like(p) for n, p in ours.items()}
    assert any(p.ndim == 1 for p in ours.values()) and any(p.ndim > 1 for p in ours.values())
    opt = build_optimizer(model, cfg)
    total = EPOCHS_RUN * SPE
    cfg.lr.bind(total, SPE)
    cfg.weight_decay.bind(total, SPE)
    for g in cfg.param_groups:
        g.bind(total, SPE)
    gen = torch.Generator().manual_seed(1)
    for step in STEPS:
        for name, p in ours.items():
            p.grad = torch.randn(p.shape, generator=gen)
        set_hyperparameters(opt, cfg.lr.at(step) * cfg.lr_factor(), cfg.weight_decay.at(step), group_values(cfg, step))
        opt.step()
        if graph == "barlow_twins.yaml":   # lr × 0.2 for weights, lr × 0.0048 for biases and BatchNorm
            lr = official_lr(step, 2048, 1.0)
            lrs = [lr * (0.0048 if p.ndim == 1 else 0.2) for p in theirs.values()]
        else:                              # one group: base_lr 0.2
            lrs = [official_lr(step, 2048, 0.2)] * len(theirs)
        for (name, p), t in zip(ours.items(), theirs.values()):
            t.grad = p.grad
        official_lars_step(list(theirs.values()), lrs, list(states.values()))
        for name, p in ours.items():
            torch.testing.assert_close(p.detach(), theirs[name], rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"{graph} step {step} {name}: {m}")
