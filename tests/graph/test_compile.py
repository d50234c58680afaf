"""The compiler: shared weights, stop-gradients, no-grad regions, state updates, and the generated code."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import composer
from composer.graph.shapes import example_batch


def _build(path, **kw):
    torch.manual_seed(0)
    spec = composer.load(path, **kw)
    model = composer.build(spec)
    batch = model.data_stage(example_batch(spec, 4))
    return model, batch


def _info_nce(q, k, negatives, t):
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def test_shared_weights_and_stop_gradient_match_a_hand_written_reference():
    model, batch = _build("tests/graphs/tiny_shared.yaml")
    # one module per block, called twice
    assert sum(1 for n, _ in model.named_children() if n == "encoder") == 1
    x_q = batch["x_q"].clone().requires_grad_(True)
    x_k = batch["x_k"].clone().requires_grad_(True)
    out = model({"x_q": x_q, "x_k": x_k})
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    # the same method by hand: the key branch and the negatives are constants
    model.zero_grad()
    f = lambda x: F.normalize(model.projector(model.encoder(x)), dim=-1)
    q = f(batch["x_q"])
    with torch.no_grad():
        k = f(batch["x_k"])
    ref = _info_nce(q, k, q.detach(), 0.5)
    ref.backward()
    assert torch.allclose(out.loss, ref)
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6), n
    assert x_k.grad is None or torch.count_nonzero(x_k.grad) == 0  # exactly zero past the !sg edge
    assert x_q.grad is not None and torch.count_nonzero(x_q.grad) > 0  # and non-zero before it


def test_no_grad_region_and_outputs():
    model, batch = _build("tests/graphs/tiny_moco.yaml")
    out = model(batch)
    assert out.values["q"].requires_grad
    assert not out.values["k"].requires_grad  # the key branch ran with grad disabled
    assert not out.values["k__key_encoder"].requires_grad
    assert set(out.values) >= {"x_q", "x_k", "q", "k", "loss", "queue"}
    assert out.updates["queue"]["keys"].shape == (4, 16) and not out.updates["queue"]["keys"].requires_grad
    assert torch.is_grad_enabled()  # the grad mode is restored after the region
    with torch.no_grad():  # ... and not switched on inside an outer no_grad
        assert not model(batch).values["q"].requires_grad
    code = model.code
    assert "k = self.normalize(x = k__key_projector)" in code
    assert "torch._C._set_grad_enabled(False)" in code and "detach()" in code
    assert "x_q = self.aug(image = image)" in code


def test_teachers_hold_no_trainable_weights_and_start_identical():
    model, _ = _build("tests/graphs/tiny_moco.yaml")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and not any(n.startswith("key_") for n in names)
    for (_, s), (_, t) in zip(model.encoder.named_parameters(), model.key_encoder.module.named_parameters()):
        assert torch.equal(s, t)


def test_ema_update_follows_the_cosine_schedule():
    spec = composer.load("tests/graphs/tiny_moco.yaml",
                         overrides=["blocks.key_encoder.momentum={cosine: [0.9, 1.0]}"])
    model = composer.build(spec)
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    teacher_before = [p.clone() for p in model.key_encoder.module.parameters()]
    bn_before = [b.clone() for b in model.key_encoder.module.buffers()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    step = 3
    out = composer.Output(torch.zeros(()), {}, {"queue": {"keys": torch.zeros(4, 16)}})
    model.update(out, step)
    m = 1 - 0.5 * (1 + math.cos(math.pi * step / 10)) * (1 - 0.9)  # MoCo v3 / BYOL / DINO formula
    for t0, t1, s in zip(teacher_before, model.key_encoder.module.parameters(), model.encoder.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
    for b0, b1 in zip(bn_before, model.key_encoder.module.buffers()):
        assert torch.equal(b0, b1)  # buffers are never averaged


def test_queue_semantics_as_in_moco():
    from composer.blocks.memory import Queue
    q = Queue(size=8, dim=2)
    pointers = []
    for step in range(3):
        keys = torch.full((4, 2), float(step + 1))
        before = q().clone()
        q.update(step, keys=keys)
        pointers.append(int(q.ptr))
        assert torch.equal(q()[(pointers[-1] - 4) % 8:][:4], keys)  # written where the pointer was
        assert not torch.equal(before, q())
    assert pointers == [4, 0, 4]
    with pytest.raises(ValueError, match="multiple of the global batch"):
        Queue(size=6, dim=2).update(0, keys=torch.zeros(4, 2))
    assert torch.allclose(Queue(size=8, dim=3)().norm(dim=1), torch.ones(8))  # unit keys at start


def test_dino_center_update_matches_the_toy_vector():
    from composer.blocks.memory import Center
    c = Center(dim=3, momentum=0.9)
    c.update(0, teacher=torch.tensor([[[1.0, 0, 0]], [[0.0, 1, 0]]]))  # (2 crops, N=1, K=3)
    assert torch.allclose(c(), torch.tensor([[0.05, 0.05, 0.0]]))


def test_weighted_objective(tmp_path):
    g = tmp_path / "two.yaml"
    g.write_text(open("tests/graphs/tiny_shared.yaml").read().replace(
        "  loss: {info_nce: {query: q, positive: !sg k, negatives: !sg q}}",
        "  loss_a: {info_nce: {query: q, positive: !sg k, negatives: !sg q}}\n"
        "  loss_b: {info_nce: {query: k, positive: !sg q, negatives: !sg k}}") + "objective: {loss_a: 1.0, loss_b: 0.5}\n")
    model, batch = _build(g)
    out = model(batch)
    assert torch.allclose(out.loss, out.values["loss_a"] + 0.5 * out.values["loss_b"])


@pytest.mark.slow
def test_compiled_model_stage_matches_eager():
    model, batch = _build("tests/graphs/tiny_moco.yaml")
    out = model(batch)
    out.loss.backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.compile()
    out_c = model(batch)
    out_c.loss.backward()
    assert torch.allclose(out.loss, out_c.loss, rtol=1e-5, atol=1e-6)
    assert eager
    for n, p in model.named_parameters():
        if n in eager:
            assert torch.allclose(p.grad, eager[n], rtol=1e-4, atol=1e-5), n
