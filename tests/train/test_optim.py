"""Optimizers, parameter groups, clipping and the train: grammar, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import composer
from composer.graph.train_section import parse_train
from composer.runtime.errors import GraphError
from composer.train.optim import (
    LARS,
    build_optimizer,
    clip_gradients,
    freeze_gradients,
    set_hyperparameters,
    split_parameters,
)

GRAPH = "tests/graphs/tiny_simclr.yaml"


def spec_with(train: dict):
    """The test graph with its train: section replaced by ``train``."""
    return composer.load(GRAPH, {"train": None, **{f"train.{k}": v for k, v in train.items()}})


# ---------------------------------------------------------------------------------------------------- LARS

def test_lars_first_step_hand_vector():
    # w = (3, 4): |w| = 5; g = (0.6, 0.8): |g| = 1, no decay -> q = 0.001 * 5 / 1 = 0.005; mu = q g;
    # w <- w - lr mu with lr = 1: (3 - 0.003, 4 - 0.004)
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = LARS([w], lr=1.0)
    w.grad = torch.tensor([[0.6, 0.8]])
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([[2.997, 3.996]]), atol=1e-7)


def test_lars_weight_decay_enters_the_trust_ratio():
    # d = g + wd w = (0.6, 0.8) + 0.1 (3, 4) = (0.9, 1.2), |d| = 1.5, q = 0.001 * 5 / 1.5; w <- w - lr q d
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = LARS([w], lr=2.0, weight_decay=0.1)
    w.grad = torch.tensor([[0.6, 0.8]])
    opt.step()
    q = 0.001 * 5 / 1.5
    expected = torch.tensor([[3 - 2 * q * 0.9, 4 - 2 * q * 1.2]])
    assert torch.allclose(w.detach(), expected, atol=1e-7)


def _moco_v3_reference(w, grads, lrs, wd, adapt, momentum=0.9, eta=0.001):
    """moco-v3 · moco/optimizer.py · LARS.step, transcribed."""
    w, mu = w.clone(), torch.zeros_like(w)
    for g, lr in zip(grads, lrs):
        d = g.clone()
        if adapt:
            d = d + wd * w
            pn, un = torch.norm(w), torch.norm(d)
            q = torch.where(pn > 0, torch.where(un > 0, eta * pn / un, torch.ones(())), torch.ones(()))
            d = d * q
        mu = momentum * mu + d
        w = w - lr * mu
    return w


def _simclr_reference(w, grads, lrs, wd, adapt, momentum=0.9, eta=0.001):
    """google-research/simclr · lars_optimizer.py (classic_momentum=True, no nesterov), transcribed."""
    w, v = w.clone(), torch.zeros_like(w)
    for g, lr in zip(grads, lrs):
        g = g + wd * w if adapt else g
        trust = 1.0
        if adapt:
            wn, gn = float(torch.norm(w)), float(torch.norm(g))
            trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
        v = momentum * v + lr * trust * g
        w = w - v
    return w


@pytest.mark.parametrize("lr_in_momentum, reference", [(False, _moco_v3_reference), (True, _simclr_reference)])
def test_lars_matches_both_official_variants_with_a_changing_lr(lr_in_momentum, reference):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 3, generator=gen)
    b0 = torch.randn(4, generator=gen)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(4)]
    bgrads = [torch.randn(4, generator=gen) for _ in range(4)]
    lrs = [0.5, 1.0, 2.0, 0.25]
    w, b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    opt = LARS([{"params": [w], "weight_decay": 0.01, "lars_adapt": True},
                {"params": [b], "weight_decay": 0.0, "lars_adapt": False}], lr_in_momentum=lr_in_momentum)
    for g, bg, lr in zip(grads, bgrads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad, b.grad = g.clone(), bg.clone()
        opt.step()
    assert torch.allclose(w.detach(), reference(w0, grads, lrs, 0.01, True), atol=1e-6)
    assert torch.allclose(b.detach(), reference(b0, bgrads, lrs, 0.0, False), atol=1e-6)


def test_lars_variants_differ_only_when_the_lr_changes():
    gen = torch.Generator().manual_seed(1)
    w0, grads = torch.randn(5, 5, generator=gen), [torch.randn(5, 5, generator=gen) for _ in range(3)]
    same = [_moco_v3_reference(w0, grads, [0.3] * 3, 0.0, True), _simclr_reference(w0, grads, [0.3] * 3, 0.0, True)]
    assert torch.allclose(*same, atol=1e-6)
    changing = [_moco_v3_reference(w0, grads, [0.1, 1.0, 3.0], 0.0, True),
                _simclr_reference(w0, grads, [0.1, 1.0, 3.0], 0.0, True)]
    assert not torch.allclose(*changing, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- groups

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)                    # weight 4-D, bias 1-D
        self.bn = nn.BatchNorm2d(4)                       # 1-D
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 2))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


@pytest.mark.parametrize("rules, no_decay", [
    ([], set()),                                                                      # MoCo v1/v2
    (["ndim<=1"], {"conv.bias", "bn.weight", "bn.bias", "head.bias", "norm.weight", "norm.bias", "logit_scale"}),
    (["bn", "bias"], {"conv.bias", "bn.weight", "bn.bias", "head.bias", "norm.bias"}),  # SimCLR
    (["ndim<2", "bias", "pos_embed"], {"conv.bias", "bn.weight", "bn.bias", "head.bias", "norm.weight", "norm.bias",
                                       "logit_scale", "pos_embed"}),                  # BEiT
    (["ln", "logit_scale"], {"norm.weight", "norm.bias", "logit_scale"}),
    (["norm"], {"bn.weight", "bn.bias", "norm.weight", "norm.bias"}),
])
def test_weight_decay_rules(rules, no_decay):
    decay, excluded = split_parameters(_Net(), rules)
    everything = {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.weight", "head.bias", "norm.weight",
                  "norm.bias", "pos_embed", "logit_scale"}
    assert {n for n, _ in excluded} == no_decay
    assert {n for n, _ in decay} == everything - no_decay  # frozen parameters are in neither group


@pytest.mark.parametrize("train, kind", [
    ({"optimizer": "sgd"}, torch.optim.SGD),
    ({"optimizer": {"adamw": {"betas": [0.9, 0.95]}}}, torch.optim.AdamW),
    ({"optimizer": "lars", "no_weight_decay": ["ndim<=1"]}, LARS),
])
def test_build_optimizer_groups_and_per_step_hyperparameters(train, kind):
    cfg = parse_train(spec_with(train))
    net = _Net()
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, kind)
    set_hyperparameters(opt, lr=0.5, weight_decay=0.05)
    for group in opt.param_groups:
        assert group["lr"] == 0.5
        assert group["weight_decay"] == (0.05 if group["decay"] else 0.0)
    if kind is LARS:
        assert [g["lars_adapt"] for g in opt.param_groups] == [g["decay"] for g in opt.param_groups]
    if kind is torch.optim.AdamW:
        assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_freeze_drops_gradients_by_name():
    net = _Net()
    opt = build_optimizer(net, parse_train(spec_with({})))
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    assert freeze_gradients(opt, ["head"]) == 2
    assert net.head.weight.grad is None and net.head.bias.grad is None and net.conv.weight.grad is not None


def test_clip_global_and_per_param():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])   # norms 5 and 1, global sqrt(26)
    total = clip_gradients([a, b], "global", 1.0)
    assert math.isclose(total, math.sqrt(26), rel_tol=1e-6)
    scale = 1.0 / (math.sqrt(26) + 1e-6)
    assert torch.allclose(a.grad, torch.tensor([3.0, 4.0]) * scale, atol=1e-6)
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])
    clip_gradients([a, b], "per_param", 2.0)                               # DINO: each to norm <= 2
    assert torch.allclose(a.grad, torch.tensor([3.0, 4.0]) * 2 / (5 + 1e-6), atol=1e-6)
    assert torch.allclose(b.grad, torch.tensor([0.0, 1.0]))               # already below: untouched


# ---------------------------------------------------------------------------------------------------- grammar

def test_train_grammar_reads_every_key():
    cfg = parse_train(composer.load(GRAPH, {
        "train.clip_grad": "{per_param: 3.0}", "train.accumulate": 2, "train.freeze": "{last_layer: 1ep}",
        "train.sync_bn": True, "train.lr_scaling": "linear", "train.batch_size": 512, "train.epochs": None,
        "train.steps": 100}))
    assert cfg.optimizer == "lars" and cfg.optimizer_args["lr_in_momentum"] is True
    assert cfg.clip_grad == ("per_param", 3.0) and cfg.accumulate == 2 and cfg.sync_bn
    assert cfg.freeze["last_layer"].epochs and cfg.freeze["last_layer"].value == 1
    assert cfg.no_weight_decay == ["bn", "bias"]
    assert cfg.steps == 100 and cfg.epochs is None
    assert cfg.lr_factor() == 2.0
    assert cfg.micro_batch(4) == 64                       # 512 / (4 processes x 2 micro-batches)
    cfg.lr.bind(100, 10)
    assert cfg.lr.at(0) == 0.0 and cfg.lr.at(2) == 1.2    # warm-up from 0 over 2 steps, then cosine from 1.2


def test_sqrt_scaling_reproduces_simclr_lr():
    cfg = parse_train(composer.load(GRAPH, {"train.batch_size": 4096}))
    assert math.isclose(1.2 * cfg.lr_factor(), 0.075 * math.sqrt(4096))   # SimCLR: 0.075 sqrt(B) = 4.8


@pytest.mark.parametrize("key, value, fragment", [
    ("optimizer", "adam", "sgd, lars or adamw"),
    ("optimizer", "{lars: {trust: 0.1}}", "takes no argument 'trust'"),
    ("optimizer", "{sgd: {momentum: 1.5}}", "momentum"),
    ("lr", "{cosine: [0.1]}", "train.lr"),
    ("lr_scaling", "cubic", "none, linear, sqrt"),
    ("no_weight_decay", "[ndim<=2]", "unknown rule"),
    ("clip_grad", "{total: 1.0}", "per_param"),
    ("accumulate", 0, "positive integer"),
    ("freeze", "{last_layer: soon}", "duration"),
    ("sync_bn", "maybe", "true or false"),
    ("batch_sz", 3, "did you mean 'batch_size'"),
])
def test_train_grammar_errors_name_the_line(tmp_path, key, value, fragment):
    text = open(GRAPH).read()
    path = tmp_path / "g.yaml"
    path.write_text(text)
    spec = composer.load(path, {f"train.{key}": value})
    with pytest.raises(GraphError) as info:
        parse_train(spec)
    assert fragment in str(info.value)
    assert str(info.value).startswith("<--set>") or str(path) in str(info.value)


def test_train_error_points_at_the_file_line(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(open(GRAPH).read().replace("lr_scaling: sqrt", "lr_scaling: cubic"))
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "lr_scaling" in t)
    with pytest.raises(GraphError) as info:
        parse_train(composer.load(path))
    assert str(info.value).startswith(f"{path}:{line}: train.lr_scaling")
