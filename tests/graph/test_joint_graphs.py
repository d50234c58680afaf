"""Joint-embedding graphs: EMA momentum schedules and DINO's centre over many steps against the official
formulas, and moco_v3_vit.yaml as a pure ``extends:`` of moco_v3.yaml."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from schedule_helpers import dino_cosine_scheduler

import composer
from composer.blocks.registry import get
from composer.graph.loader import read_file
from composer.graph.shapes import example_batch

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
EPOCHS, IPE = 3, 4                 # a run of 12 optimizer steps, 4 per epoch
TOTAL = EPOCHS * IPE


def _build(name: str, overrides=None):
    torch.manual_seed(0)
    model = composer.build(composer.load(GRAPHS / name, overrides, "tiny"), check=False)
    model.bind_schedules(TOTAL, IPE)
    return model


def moco_v3_momentum(epoch_fraction, epochs, m0):
    """facebookresearch/moco-v3 · main_moco.py · adjust_moco_momentum (--moco-m-cos)."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * epoch_fraction / epochs)) * (1.0 - m0)


def ijepa_momentum(ema0, ema1, ipe, epochs, ipe_scale=1.0):
    """facebookresearch/ijepa · src/helper.py · init_opt's momentum_scheduler (configs: ipe_scale 1.0)."""
    n = int(ipe * epochs * ipe_scale)
    return [ema0 + i * (ema1 - ema0) / (ipe * epochs * ipe_scale) for i in range(n + 1)]


def _walk_student(teacher, momenta, steps):
    """Move the student by a random step before every update; return the teacher after each update and the
    reference EMA ξ ← m·ξ + (1 − m)·θ with ``momenta[step]``."""
    student = list(teacher.source.parameters())
    ref = [p.detach().clone() for p in teacher.module.parameters()]
    for step in range(steps):
        with torch.no_grad():
            for p in student:
                p.add_(0.1 * torch.randn_like(p))
        teacher.update(step)
        m = float(momenta[step])
        ref = [m * r + (1 - m) * s.detach() for r, s in zip(ref, student)]
        yield step, list(teacher.module.parameters()), ref


def test_dino_teacher_follows_the_official_cosine_momentum_array_step_by_step():
    model = _build("dino.yaml")
    momenta = dino_cosine_scheduler(0.996, 1.0, EPOCHS, IPE)
    assert [model.teacher_head.momentum.at(s) for s in range(TOTAL)] == pytest.approx(momenta.tolist(), abs=1e-12)
    assert momenta[0] == 0.996 and momenta[-1] < 1.0  # the final value is never reached
    for step, got, ref in _walk_student(model.teacher_head, momenta, TOTAL):
        for g, r in zip(got, ref):
            assert torch.allclose(g, r, atol=1e-6), f"step {step}"
    assert not torch.allclose(got[0], list(model.head.parameters())[0])  # a real EMA, not a copy


def test_dino_centre_over_several_steps_matches_the_recursion():
    model = _build("dino.yaml")
    g = torch.Generator().manual_seed(0)
    ref = torch.zeros(1, 512)
    for step in range(5):
        t = torch.randn(2, 3, 512, generator=g) * (step + 1)     # raw teacher outputs (2 crops, N=3, K)
        model.center.update(step, teacher=t)
        ref = 0.9 * ref + 0.1 * t.reshape(-1, 512).sum(0, keepdim=True) / 6   # sum of rows / (2N·W), W = 1
        assert torch.allclose(model.center(), ref, atol=1e-6), f"step {step}"


def test_moco_v3_momentum_is_the_official_per_iteration_cosine():
    model = _build("moco_v3.yaml")
    for teacher in (model.momentum_encoder, model.momentum_projector):
        official = [moco_v3_momentum(epoch + i / IPE, EPOCHS, 0.99) for epoch in range(EPOCHS) for i in range(IPE)]
        assert [teacher.momentum.at(s) for s in range(TOTAL)] == pytest.approx(official, abs=1e-12)
    momenta = [model.momentum_projector.momentum.at(s + 1) for s in range(TOTAL)]  # momentum_at: next
    for step, got, ref in _walk_student(model.momentum_projector, momenta, TOTAL):
        for g, r in zip(got, ref):
            assert torch.allclose(g, r, atol=1e-6), f"step {step}"


def test_moco_v3_teacher_seen_at_each_iteration_matches_the_pre_forward_update():
    model = _build("moco_v3.yaml")
    teacher = model.momentum_projector
    student = list(teacher.source.parameters())
    m = [moco_v3_momentum(s / IPE, EPOCHS, 0.99) for s in range(TOTAL)]
    ref = [p.detach().clone() for p in teacher.module.parameters()]
    for t in range(1, TOTAL):
        # optimizer step t-1 moves the student, then composer's post-step update(t-1)
        with torch.no_grad():
            for p in student:
                p.add_(0.1 * torch.randn_like(p))
        teacher.update(t - 1)
        # builder.py · MoCo.forward at iteration t: _update_momentum_encoder(m(t)) before the keys
        ref = [m[t] * r + (1 - m[t]) * s.detach() for r, s in zip(ref, student)]
        for g, r in zip(teacher.module.parameters(), ref):
            assert torch.allclose(g, r, atol=1e-7), f"iteration {t}"


def test_ijepa_linear_momentum_step_by_step():
    schedule = composer.load(GRAPHS / "ijepa.yaml").blocks["target_encoder"].params["momentum"]
    teacher = get("teacher.ema").cls(source=torch.nn.Linear(5, 3), momentum=schedule)
    teacher.momentum.bind(TOTAL, IPE)
    official = ijepa_momentum(0.996, 1.0, IPE, EPOCHS)
    # next(momentum_scheduler) after each optimizer step i = 0, 1, ...: the i-th value
    assert [teacher.momentum.at(s) for s in range(TOTAL)] == pytest.approx(official[:TOTAL], abs=1e-12)
    for step, got, ref in _walk_student(teacher, official, TOTAL):
        for g, r in zip(got, ref):
            assert torch.allclose(g, r, atol=1e-6), f"step {step}"


# ---------------------------------------------------------------- moco_v3_vit.yaml: an extends, no Python

def _leaves(tree, prefix=()) -> dict[tuple, object]:
    """{path: value} of every leaf; lists are leaves, an empty mapping has none, null (a deletion) is a leaf."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_leaves(value, prefix + (key,)))
        return out
    return {prefix: tree}


def test_moco_v3_vit_differs_from_moco_v3_exactly_by_its_overrides():
    base = _leaves(composer.load(GRAPHS / "moco_v3.yaml").located.data)
    vit = _leaves(composer.load(GRAPHS / "moco_v3_vit.yaml").located.data)
    own = read_file(GRAPHS / "moco_v3_vit.yaml").data
    assert own.pop("extends") == "moco_v3.yaml"
    # what the child file asks for, read from the two files alone: a value that differs from the base's, or a
    # null deleting every base leaf under it (restating a base value changes nothing)
    expected = set()
    for path, value in _leaves(own).items():
        if value is None:
            removed = {k for k in base if k[:len(path)] == path}
            assert removed, f"{'.'.join(path)}: null deletes nothing in moco_v3.yaml"
            expected |= removed
        elif base.get(path, "<absent>") != value:
            expected.add(path)
    differences = {k for k in base.keys() | vit.keys() if base.get(k, "<absent>") != vit.get(k, "<absent>")}
    assert differences == expected
    assert {("name",), ("blocks", "encoder", "arch"), ("train", "optimizer", "lars", "momentum")} <= differences
    for path in expected:
        own_value = _leaves(own).get(path)
        assert vit.get(path, "<absent>") == (own_value if own_value is not None else "<absent>"), ".".join(path)


def test_moco_v3_vit_loads_checks_and_builds_the_vit_recipe():
    spec = composer.load(GRAPHS / "moco_v3_vit.yaml", variant="tiny")
    report = composer.check(spec)
    assert not report.warnings
    model = composer.build(spec, check=False)
    model.bind_schedules(10, 5)
    assert model.encoder.arch == "test_vit"
    linear = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 3 and all(m.bias is None for m in linear)     # _build_mlp(3, ...) for ViT
    last_bn = [m for m in model.predictor.modules() if isinstance(m, torch.nn.BatchNorm1d)][-1]
    assert not last_bn.affine                                           # the ViT predictor keeps its last BN
    assert spec.train["optimizer"] == {"adamw": {"betas": [0.9, 0.999]}} and spec.train["no_weight_decay"] == []
    full = composer.load(GRAPHS / "moco_v3_vit.yaml")
    assert full.blocks["encoder"].params == {"arch": "vit_small_patch16_224", "views": "separate", "model_args": {}}
    assert full.blocks["contrastive"].params["temperature"] == 0.2
    batch = model.data_stage(example_batch(spec, 4))
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.encoder.net.cls_token.grad is not None
    model.update(out, 0)


def test_dino_without_local_crops_trains_on_the_two_global_crops_only():
    """``local_crops: 0`` (DINO's ``--local_crops_number 0``): the encoder returns an empty (0, N, D) without
    running, and the loss is the mean of the two cross-view terms, −Σ softmax((t−c)/τt) · log_softmax(s/τs)."""
    model = _build("dino.yaml", ["blocks.aug.local_crops=0"])
    spec = composer.load(GRAPHS / "dino.yaml", ["blocks.aug.local_crops=0"], "tiny")
    out = model(model.data_stage(example_batch(spec, 4)))
    s, t, c = out.values["s_global"], out.values["t"], model.center()
    assert out.values["s_local"].shape[0] == 0
    q = torch.softmax((t - c) / 0.04, -1)
    ref = sum(-(q[i] * torch.log_softmax(s[j] / 0.1, -1)).sum(-1).mean() for i, j in ((0, 1), (1, 0))) / 2
    assert torch.allclose(out.loss, ref, atol=1e-5)
    out.loss.backward()
    stem = next(model.encoder.parameters())   # the first convolution: the gradient reaches the input end
    assert stem.grad is not None and stem.grad.abs().sum() > 0
