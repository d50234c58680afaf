"""``train.param_groups``: per-group lr (fixed or a factor), weight decay and LARS adaptation, checked after one
optimizer step against the update formulas written out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import composer
from composer.graph.train_section import parse_train
from composer.runtime.errors import GraphError
from composer.train.optim import build_optimizer, group_values, set_hyperparameters

SIAMESE = "tests/graphs/render_siamese.yaml"  # blocks: aug, first, second, encoder, projector, predictor, distance


def cfg_of(train: dict, graph: str = SIAMESE):
    return parse_train(composer.load(graph, {"train": train}))


class _Siamese(nn.Module):
    """Parameters named like the graph's blocks: encoder.*, projector.*, predictor.*."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.encoder = nn.Linear(3, 4)
        self.projector = nn.Sequential(nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4))
        self.predictor = nn.Linear(4, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            for p in self.parameters():
                p.grad = torch.randn(p.shape, generator=gen)


def _before(net):
    return {n: (p.detach().clone(), p.grad.clone()) for n, p in net.named_parameters()}


def test_sgd_step_per_group_lr_factor_and_decay():
    # main lr 0.2, wd 0.01; predictor: fixed lr 0.05 (main decay); biases elsewhere: 0.5 x lr and their own wd 0.1
    cfg = cfg_of({"optimizer": {"sgd": {"momentum": 0.9}}, "lr": 0.2, "weight_decay": 0.01, "param_groups": [
        {"blocks": ["predictor"], "lr": 0.05},
        {"params": ["bias"], "lr_factor": 0.5, "weight_decay": 0.1}]})
    net = _Siamese()
    opt = build_optimizer(net, cfg)
    for g in cfg.param_groups:
        g.bind(10, 1)
    set_hyperparameters(opt, cfg.lr.at(0), cfg.weight_decay.at(0), group_values(cfg, 0))
    old = _before(net)
    opt.step()
    # first SGD step: the momentum buffer is d = g + wd w, so w <- w - lr d
    expected_lr_wd = {"predictor.weight": (0.05, 0.01), "predictor.bias": (0.05, 0.01),
                      "encoder.bias": (0.1, 0.1), "projector.1.bias": (0.1, 0.1),
                      "encoder.weight": (0.2, 0.01), "projector.0.weight": (0.2, 0.01), "projector.1.weight": (0.2, 0.01)}
    assert set(expected_lr_wd) == set(old)
    for name, p in net.named_parameters():
        w, g = old[name]
        lr, wd = expected_lr_wd[name]
        assert torch.allclose(p.detach(), w - lr * (g + wd * w), atol=1e-7), name


def test_lars_barlow_twins_groups():
    # Barlow Twins: weights adapted and decayed at lr; biases and BN at 0.024 x lr, no decay, no adaptation
    cfg = cfg_of({"optimizer": "lars", "lr": 0.5, "weight_decay": 0.1, "param_groups": [
        {"params": ["ndim<=1"], "lr_factor": 0.024, "weight_decay": 0, "lars_adapt": False}]})
    net = _Siamese()
    opt = build_optimizer(net, cfg)
    set_hyperparameters(opt, 0.5, 0.1, group_values(cfg, 0))
    old = _before(net)
    opt.step()
    for name, p in net.named_parameters():
        w, g = old[name]
        if w.ndim > 1:
            d = g + 0.1 * w
            q = 0.001 * w.norm() / d.norm()
            expected = w - 0.5 * q * d
        else:
            expected = w - 0.5 * 0.024 * g
        assert torch.allclose(p.detach(), expected, atol=1e-7), name


def test_lars_decay_without_adaptation_is_added_unscaled():
    # barlowtwins · main.py · LARS filters decay and adaptation separately: decay on, adaptation off
    cfg = cfg_of({"optimizer": "lars", "lr": 1.0, "param_groups": [
        {"blocks": ["predictor"], "weight_decay": 0.3, "lars_adapt": False}]})
    net = _Siamese()
    opt = build_optimizer(net, cfg)
    set_hyperparameters(opt, 1.0, 0.0, group_values(cfg, 0))
    old = _before(net)
    opt.step()
    w, g = old["predictor.weight"]
    assert torch.allclose(net.predictor.weight.detach(), w - 1.0 * (g + 0.3 * w), atol=1e-7)


def test_simsiam_fixed_predictor_lr_while_the_rest_follows_cosine():
    # main_simsiam.py: init_lr = lr x B / 256; encoder lr = init_lr (1 + cos(pi t / T)) / 2; predictor: init_lr
    cfg = cfg_of({"lr": {"cosine": [0.05, 0.0]}, "lr_scaling": "linear", "batch_size": 512, "steps": 10,
                  "epochs": None, "weight_decay": 1e-4,
                  "param_groups": [{"blocks": ["predictor"], "lr": 0.05, "name": "predictor"}]})
    net = _Siamese()
    opt = build_optimizer(net, cfg)
    cfg.lr.bind(10, 1)
    cfg.weight_decay.bind(10, 1)
    for g in cfg.param_groups:
        g.bind(10, 1)
    init_lr = 0.05 * 512 / 256
    for step in range(10):
        set_hyperparameters(opt, cfg.lr.at(step) * cfg.lr_factor(), cfg.weight_decay.at(step),
                            group_values(cfg, step))
        for group in opt.param_groups:
            if group["label"] == "predictor":
                assert group["lr"] == pytest.approx(init_lr)
                assert set(group["names"]) == {"predictor.weight", "predictor.bias"}
            else:
                assert group["lr"] == pytest.approx(init_lr * 0.5 * (1 + math.cos(math.pi * step / 10)))
            assert group["weight_decay"] == pytest.approx(1e-4)


def test_first_matching_entry_wins_and_rest_keeps_no_weight_decay_split():
    cfg = cfg_of({"no_weight_decay": ["ndim<=1"], "param_groups": [
        {"blocks": ["predictor"], "lr_factor": 2.0}, {"blocks": ["predictor", "encoder"], "lr_factor": 3.0}]})
    groups = {g["label"]: set(g["names"]) for g in build_optimizer(_Siamese(), cfg).param_groups}
    assert groups == {"param_groups[0]": {"predictor.weight"}, "param_groups[0] (no decay)": {"predictor.bias"},
                      "param_groups[1]": {"encoder.weight"}, "param_groups[1] (no decay)": {"encoder.bias"},
                      "decay": {"projector.0.weight"}, "no_decay": {"projector.1.weight", "projector.1.bias"}}


def test_an_entry_that_selects_nothing_is_one_line():
    cfg = cfg_of({"param_groups": [{"blocks": ["encoder"]}, {"blocks": ["encoder"], "lr_factor": 2.0}]})
    with pytest.raises(GraphError) as info:
        build_optimizer(_Siamese(), cfg)
    assert "train.param_groups[1]: selects no trainable parameter" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("group, fragment", [
    ({"blocks": ["predictr"]}, "'predictr' is not a block of this graph (did you mean 'predictor'?)"),
    ({"block": ["predictor"]}, "unknown key 'block' (did you mean 'blocks'?)"),
    ({"lr": 0.1}, "selects no parameters"),
    ({"blocks": ["predictor"], "lr": 0.1, "lr_factor": 2}, "either lr"),
    ({"blocks": ["predictor"], "lr_factor": -1}, "non-negative number"),
    ({"blocks": ["predictor"], "lr": {"cosine": [0.1]}}, "param_groups[0].lr"),
    ({"blocks": ["predictor"], "lars_adapt": False}, "only LARS adapts"),
    ({"params": ["ndim<=3"]}, "param_groups[0].params: unknown rule 'ndim<=3'"),
])
def test_param_group_errors_are_one_line_at_the_entry(tmp_path, group, fragment):
    path = tmp_path / "g.yaml"
    path.write_text(open(SIAMESE).read() + "train:\n  optimizer: sgd\n  param_groups:\n    - " +
                    __import__("json").dumps(group) + "\n")
    with pytest.raises(GraphError) as info:
        parse_train(composer.load(path))
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert message.startswith(f"{path}:")
