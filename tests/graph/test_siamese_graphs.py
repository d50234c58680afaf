"""BYOL and SimSiam graphs (graphs/byol.yaml, graphs/simsiam.yaml) against the official code, written out here:

- the loss programs, in float64 value and gradient, against the official formulas (deepmind-research ·
  byol/utils/helpers.py · regression_loss, l2_normalize; facebookresearch/simsiam · main_simsiam.py · train)
  and lightly 1.6.0's NegativeCosineSimilarity, plus two hand-checked vectors;
- BYOL's target: an independent initialisation (byol_experiment.py · _make_initial_state), then τ_k of
  schedules.py · target_ema and ξ ← ξ + (1 − τ_k)(θ − ξ) after every optimizer step (ByolExperiment._update_fn);
- the optimizers after one step: BYOL's LARS with biases and BatchNorm excluded from decay and adaptation
  (utils/optimizers.py · lars, exclude_bias_and_norm) and its warm-up + cosine lr (schedules.py ·
  learning_schedule); SimSiam's SGD with the predictor at init_lr (--fix-pred-lr) and the per-epoch cosine
  (main_simsiam.py · adjust_learning_rate);
- the collapse check: SimSiam without its stop-gradient is reported, with it (and BYOL) not.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import composer
from composer.blocks.expr.block import ExpressionLoss
from composer.graph.train_section import parse_train
from composer.train.optim import build_optimizer, group_values, set_hyperparameters

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
A = [[1., 2., 0.], [0., 1., -1.], [2., -1., 1.], [1., 1., 1.]]
BM = [[1., 0., 1.], [1., 2., 0.], [-1., 0., 2.], [0., 1., 1.]]


def _program(graph: str, block: str):
    """The graph's loss program run in the inputs' precision (the block itself computes in float32)."""
    loss = ExpressionLoss(expr=composer.load(GRAPHS / graph).blocks[block].params["expr"])
    return lambda **inputs: loss._evaluate(inputs)


def _build(graph: str, total: int, per_epoch: int, overrides=None):
    torch.manual_seed(0)
    model = composer.build(composer.load(GRAPHS / graph, overrides, "tiny"), check=False)
    model.bind_schedules(total, per_epoch)
    return model


# ---------------------------------------------------------------- (a) the losses

def byol_official(p, z):
    """helpers.py · regression_loss on l2_normalize(x) = x · rsqrt(max(Σx², 1e-12)); both directions summed per
    sample, then the batch mean (byol_experiment.py · loss_fn)."""
    def l2n(x):
        return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=1e-12))

    def rl(x, y):
        return ((l2n(x) - l2n(y)) ** 2).sum(-1)
    return (rl(p[0], z[1]) + rl(p[1], z[0])).mean()


def simsiam_official(p, z):
    """main_simsiam.py · train: -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5."""
    cos = torch.nn.CosineSimilarity(dim=1)
    return -(cos(p[0], z[1]).mean() + cos(p[1], z[0]).mean()) * 0.5


def _value_and_grad(fn, p, z):
    p = p.clone().requires_grad_(True)
    loss = fn(p, z.clone())
    loss.backward()
    return loss.detach(), p.grad


@pytest.mark.parametrize("graph, block", [("byol.yaml", "regression"), ("simsiam.yaml", "simsiam")])
def test_loss_programs_equal_the_official_formula_and_lightly_in_float64(graph, block):
    from lightly.loss import NegativeCosineSimilarity
    ncs = NegativeCosineSimilarity()
    theirs = {  # lightly 1.6.0: BYOL's 2 − 2cos summed over the two directions is 4 + 2(ncs + ncs)
        "byol.yaml": (byol_official, lambda p, z: 4 + 2 * (ncs(p[0], z[1]) + ncs(p[1], z[0]))),
        "simsiam.yaml": (simsiam_official, lambda p, z: 0.5 * (ncs(p[0], z[1]) + ncs(p[1], z[0]))),
    }[graph]
    program = _program(graph, block)
    gen = torch.Generator().manual_seed(5)
    p, z = (torch.randn(2, 16, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    ours, ours_grad = _value_and_grad(lambda p, z: program(p=p, z=z), p, z)
    assert ours.dtype == torch.float64
    for reference in theirs:
        value, grad = _value_and_grad(reference, p, z)
        torch.testing.assert_close(ours, value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours_grad, grad, rtol=1e-10, atol=1e-12)
    # the block as the graph runs it: the same program in float32
    block = ExpressionLoss(expr=composer.load(GRAPHS / graph).blocks[block].params["expr"])
    torch.testing.assert_close(block(p=p, z=z), ours.float(), rtol=1e-6, atol=1e-6)


def test_loss_programs_on_the_hand_checked_vectors():
    a, b = torch.tensor(A, dtype=torch.float64), torch.tensor(BM, dtype=torch.float64)
    p, z = torch.stack([a, b]), torch.stack([b, a + 1])
    assert _program("byol.yaml", "regression")(p=p, z=z).item() == pytest.approx(0.252770, abs=1e-6)
    assert _program("simsiam.yaml", "simsiam")(p=p, z=z).item() == pytest.approx(-0.936808, abs=1e-6)
    # BYOL's range: 0 for aligned predictions, 8 for opposite ones
    assert _program("byol.yaml", "regression")(p=torch.stack([a, a]), z=torch.stack([a, a])).item() == \
        pytest.approx(0.0, abs=1e-12)
    assert _program("byol.yaml", "regression")(p=torch.stack([a, a]), z=-torch.stack([a, a])).item() == \
        pytest.approx(8.0)


# ---------------------------------------------------------------- (c) BYOL's target network

def byol_target_ema(step: int, base_ema: float, max_steps: int) -> float:
    """byol/utils/schedules.py · target_ema: 1 − (1 − base)·½(1 + cos(π·min(k, K)/K))."""
    decay = 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))
    return 1.0 - (1.0 - base_ema) * decay


def test_byol_target_starts_independent_and_follows_the_official_ema_step_by_step():
    total = 12
    model = _build("byol.yaml", total, 4)
    for teacher, online in ((model.target_encoder, model.encoder), (model.target_projector, model.projector)):
        assert teacher.momentum.at(0) == 0.9 and not any(p.requires_grad for p in teacher.module.parameters())
        weights = [p for p in online.parameters() if p.ndim > 1]
        targets = [p for p in teacher.module.parameters() if p.ndim > 1]
        assert [w.shape for w in weights] == [t.shape for t in targets]
        assert all(not torch.allclose(w, t) for w, t in zip(weights, targets))  # _make_initial_state: own rng
    # the full graph's τ_base 0.996 over K = 1000 steps: 0.996, 0.998 at K/2, 1.0 at K
    full = composer.load(GRAPHS / "byol.yaml").blocks["target_encoder"].params["momentum"]
    teacher = type(model.target_encoder)(source=torch.nn.Linear(3, 2), momentum=full)
    teacher.momentum.bind(1000, 10)
    assert [teacher.momentum.at(k) for k in (0, 500, 1000)] == pytest.approx([0.996, 0.998, 1.0], abs=1e-12)
    assert [teacher.momentum.at(k) for k in range(1000)] == \
        pytest.approx([byol_target_ema(k, 0.996, 1000) for k in range(1000)], abs=1e-12)
    # _update_fn: the optimizer moves the online network, then target ← target + (1 − τ_k)(online − target)
    for teacher in (model.target_encoder, model.target_projector):
        online = list(teacher.source.parameters())
        ref = [p.detach().clone() for p in teacher.module.parameters()]
        for k in range(total):
            with torch.no_grad():
                for p in online:
                    p.add_(0.1 * torch.randn_like(p))
            teacher.update(k)
            tau = byol_target_ema(k, 0.9, total)  # the tiny variant: τ_base 0.9
            ref = [r + (1 - tau) * (o.detach() - r) for r, o in zip(ref, online)]
            for got, want in zip(teacher.module.parameters(), ref):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=f"step {k}")


def test_byol_target_batchnorm_uses_batch_statistics_in_training():
    # byol_experiment.py · _forward on the target is called with is_training=True
    model = _build("byol.yaml", 10, 5)
    model.train()
    assert model.target_encoder.module.training and model.target_projector.module.training


def test_simsiam_and_byol_heads_have_the_official_layers():
    byol, simsiam = _build("byol.yaml", 10, 5), _build("simsiam.yaml", 10, 5)

    def layers(head):
        return [(type(m).__name__, getattr(m, "bias", None) is not None, getattr(m, "affine", None))
                for m in head.net]
    # networks.py · MLP: Linear (with bias), BN, ReLU, Linear (no bias)
    mlp = [("Linear", True, None), ("BatchNorm1d", True, True), ("ReLU", False, None), ("Linear", False, None)]
    assert layers(byol.projector) == mlp and layers(byol.predictor) == mlp
    # builder.py: three no-bias Linears, BN after each, the last BN affine=False; predictor's last Linear biased
    assert layers(simsiam.projector) == [("Linear", False, None), ("BatchNorm1d", True, True), ("ReLU", False, None)] \
        * 2 + [("Linear", False, None), ("BatchNorm1d", False, False)]
    assert layers(simsiam.predictor) == [("Linear", False, None), ("BatchNorm1d", True, True), ("ReLU", False, None),
                                         ("Linear", True, None)]


# ---------------------------------------------------------------- (d) optimizers and parameter groups

def byol_learning_schedule(step, batch_size, base_lr, total_steps, warmup_steps):
    """byol/utils/schedules.py · learning_schedule: linear warm-up to base·B/256, then cosine to 0."""
    scaled = base_lr * batch_size / 256.0
    if step < warmup_steps:
        return step / warmup_steps * scaled
    t = min(step - warmup_steps, total_steps - warmup_steps)
    return scaled * 0.5 * (1 + math.cos(math.pi * t / (total_steps - warmup_steps)))


def test_byol_lars_excludes_biases_and_batchnorm_from_decay_and_adaptation():
    model = _build("byol.yaml", 10, 5)
    cfg = parse_train(composer.load(GRAPHS / "byol.yaml"))   # the full recipe's train section
    assert (cfg.optimizer, cfg.batch_size, cfg.epochs) == ("lars", 4096, 1000)
    spe, total = 50, 1000 * 50                              # any epoch length: warm-up is 10 epochs
    cfg.lr.bind(total, spe)
    cfg.weight_decay.bind(total, spe)
    for k in (0, 1, 250, 499, 500, 501, 10_000, total - 1):
        assert cfg.lr.at(k) * cfg.lr_factor() == pytest.approx(byol_learning_schedule(k, 4096, 0.2, total, 500),
                                                               rel=1e-12, abs=1e-15)
    opt = build_optimizer(model, cfg)
    step = 800
    lr, wd = cfg.lr.at(step) * cfg.lr_factor(), cfg.weight_decay.at(step)
    set_hyperparameters(opt, lr, wd, group_values(cfg, step))
    gen = torch.Generator().manual_seed(0)
    names = dict(model.named_parameters())
    for p in model.trainable_parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    old = {n: (p.detach().clone(), p.grad.clone()) for n, p in names.items() if p.requires_grad}
    opt.step()
    bn = {n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    excluded = 0
    for name, (w, g) in old.items():
        # optimizers.py · exclude_bias_and_norm: the name is a bias ('b') or the module is a norm
        if name.endswith("bias") or name.rsplit(".", 1)[0] in bn:
            excluded += 1
            update = g                                        # neither decay nor trust ratio
        else:
            d = g + 1.5e-6 * w                                # add_weight_decay before LARS
            update = d * 1e-3 * w.norm() / d.norm()           # trust ratio η‖w‖/‖d‖, η = 1e-3
        # first step of momentum 0.9: μ = update; w ← w − lr·μ
        torch.testing.assert_close(names[name].detach(), w - lr * update, rtol=1e-5, atol=1e-5, msg=name)
    assert excluded >= 6  # projector and predictor biases and BN scales/offsets, the encoder's BN


def simsiam_lr(epoch: int, init_lr: float, epochs: int) -> float:
    """main_simsiam.py · adjust_learning_rate, called at the start of every epoch."""
    return init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def test_simsiam_sgd_fixed_predictor_lr_and_per_epoch_cosine():
    model = _build("simsiam.yaml", 10, 5)
    cfg = parse_train(composer.load(GRAPHS / "simsiam.yaml"))
    assert (cfg.optimizer, cfg.optimizer_args["momentum"], cfg.batch_size, cfg.epochs) == ("sgd", 0.9, 512, 100)
    spe = 7
    total = cfg.epochs * spe
    cfg.lr.bind(total, spe)
    cfg.weight_decay.bind(total, spe)
    for g in cfg.param_groups:
        g.bind(total, spe)
    init_lr = 0.05 * 512 / 256
    opt = build_optimizer(model, cfg)
    labels = {g["label"] for g in opt.param_groups}
    assert labels == {"predictor", "decay"}  # --wd 1e-4 on every parameter: no no-decay group
    for step in range(total):
        lr = cfg.lr.at(step) * cfg.lr_factor()
        set_hyperparameters(opt, lr, cfg.weight_decay.at(step), group_values(cfg, step))
        for group in opt.param_groups:
            want = init_lr if group["label"] == "predictor" else simsiam_lr(step // spe, init_lr, cfg.epochs)
            assert group["lr"] == pytest.approx(want, rel=1e-12), f"step {step}, {group['label']}"
            assert group["weight_decay"] == 1e-4
    # one step: torch SGD, decay coupled and on biases and BatchNorm too: w ← w − lr (g + 1e-4 w)
    step = 3 * spe + 2
    set_hyperparameters(opt, cfg.lr.at(step) * cfg.lr_factor(), 1e-4, group_values(cfg, step))
    names = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    for p in model.trainable_parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    old = {n: (p.detach().clone(), p.grad.clone()) for n, p in names.items() if p.requires_grad}
    opt.step()
    for name, (w, g) in old.items():
        lr = init_lr if name.startswith("predictor.") else simsiam_lr(3, init_lr, cfg.epochs)
        torch.testing.assert_close(names[name].detach(), w - lr * (g + 1e-4 * w), rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------- the collapse check

def test_collapse_check_reports_simsiam_without_its_stop_gradient_only():
    assert composer.check(composer.load(GRAPHS / "simsiam.yaml", None, "tiny")).warnings == []
    assert composer.check(composer.load(GRAPHS / "byol.yaml", None, "tiny")).warnings == []
    no_sg = composer.load(GRAPHS / "simsiam.yaml", {"flow.loss": "{simsiam: {p: p, z: z}}"}, "tiny")
    (warning,) = composer.check(no_sg).warnings
    assert "loss 'simsiam' (loss.expr) can collapse" in warning
    assert "'p' from 'p' (through predictor, projector, encoder)" in warning
    assert "'z' from 'z' (through projector, encoder)" in warning
    assert "Put !sg on one input" in warning and "simsiam.yaml:" in warning
    # BYOL with the online network as its own target, without stop-gradient: the same report
    online = composer.load(GRAPHS / "byol.yaml", ["flow.z=null", "flow.z={projector: {encoder: views}}",
                                                  "flow.loss={regression: {p: p, z: z}}",
                                                  "blocks.target_encoder=null", "blocks.target_projector=null"],
                           "tiny")
    (warning,) = composer.check(online).warnings
    assert "loss 'regression' (loss.expr) can collapse" in warning


# ---------------------------------------------------------------- the generic additions, on bad input

def test_per_epoch_schedule_and_independent_teacher_reject_bad_input():
    from composer.blocks.registry import get
    from composer.runtime.errors import GraphError
    from composer.runtime.schedules import Schedule
    with pytest.raises(ValueError, match="per: expected step or epoch, got 'week'"):
        Schedule.parse({"cosine": [0.05, 0.0], "per": "week"})
    with pytest.raises(GraphError, match=r"train\.lr: per: expected step or epoch") as e:
        parse_train(composer.load(GRAPHS / "simsiam.yaml", {"train.lr.per": "week"}))
    assert "\n" not in str(e.value)  # one line, at the overriding --set
    # 3 epochs of 4 steps, one of warm-up: each epoch holds the value of its first step (0, then 1, then ½)
    held = Schedule.parse({"cosine": [1.0, 0.0], "warmup": "1ep", "per": "epoch"}).bind(12, 4)
    assert [held.at(s) for s in range(12)] == pytest.approx([0.0] * 4 + [1.0] * 4 + [0.5] * 4)
    with pytest.raises(ValueError, match="init independent needs a source block built from a graph"):
        get("teacher.ema").cls(source=torch.nn.Linear(3, 2), init="independent")


# ---------------------------------------------------------------- the augmentations of the official recipes

def _recipe(pipeline) -> dict:
    """The settings of one view's v2.Compose, by transform."""
    from torchvision.transforms import v2
    out = {}
    for t in pipeline.transforms:
        inner = t.transforms[0] if isinstance(t, v2.RandomApply) else t
        p = t.p if isinstance(t, v2.RandomApply) else getattr(t, "p", None)
        if isinstance(inner, v2.RandomResizedCrop):
            out["crop"] = (inner.size, inner.scale, inner.interpolation.value)
        elif isinstance(inner, v2.RandomHorizontalFlip):
            out["flip"] = p
        elif isinstance(inner, v2.ColorJitter):
            out["jitter"] = (inner.brightness, inner.contrast, inner.saturation, inner.hue, p)
        elif isinstance(inner, v2.RandomGrayscale):
            out["gray"] = p
        elif isinstance(inner, v2.GaussianBlur):
            out["blur"] = (inner.kernel_size, list(inner.sigma), p)
        elif isinstance(inner, v2.RandomSolarize):
            out["solarize"] = (inner.threshold, p)
    return out


def test_augmentations_are_the_official_views():
    def views(graph):
        model = composer.build(composer.load(GRAPHS / graph), check=False)
        return [_recipe(p) for p in model.data_stage.graph_module.aug.groups[0]]
    # BYOL (utils/augmentations.py · augment_config): bicubic crop 0.08-1, jitter (0.4, 0.4, 0.2, 0.1) p0.8,
    # gray 0.2, blur with a 23-tap kernel at 224 (p1.0 / p0.1), solarize (p0 / p0.2) at 0.5 = uint8 128
    common = {"crop": ((224, 224), (0.08, 1.0), "bicubic"), "flip": 0.5,
              "jitter": ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1), 0.8), "gray": 0.2}
    assert views("byol.yaml") == [{**common, "blur": ((23, 23), [0.1, 2.0], 1.0)},
                                  {**common, "blur": ((23, 23), [0.1, 2.0], 0.1), "solarize": (128, 0.2)}]
    # SimSiam (main_simsiam.py, MoCo v2's): bilinear crop 0.2-1, jitter (0.4, 0.4, 0.4, 0.1) p0.8, gray 0.2,
    # blur p0.5 with PIL's kernel for sigma up to 2 (radius 6: 13 taps), flip; twice the same recipe
    simsiam = {"crop": ((224, 224), (0.2, 1.0), "bilinear"), "flip": 0.5,
               "jitter": ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1), 0.8), "gray": 0.2,
               "blur": ((13, 13), [0.1, 2.0], 0.5)}
    assert views("simsiam.yaml") == [simsiam, simsiam]
