"""loss.dino: test vectors from the official code, the official per-pair loop as a second reference, and the
teacher-temperature schedule held in a buffer (advanced only by ``update``)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from composer.blocks.losses.dino import DINOLoss
from composer.runtime.schedules import Schedule


def test_zero_outputs_give_log_k():
    k = 65536
    for n in (2, 32):  # a sum over N·K terms at once drifted 1.7 % at N = 32 on some machines
        zeros = torch.zeros(2, n, k)
        for temps in [dict(), dict(student_temp=0.3, teacher_temp=0.07)]:
            loss = DINOLoss(**temps)(zeros, torch.zeros(3, n, k), zeros, torch.zeros(1, k))
            assert loss.item() == pytest.approx(math.log(k), rel=1e-6)
    assert math.log(k) == pytest.approx(11.090355, abs=1e-6)


def test_toy_vector():
    t = torch.tensor([[[1.0, 0, 0]], [[0, 1.0, 0]]])  # (2, N=1, K=3)
    s = torch.tensor([[[0.1, 0.2, 0.3]], [[0.3, 0.2, 0.1]], [[0.0, 0, 0]]])  # 2 globals + V=1 local
    loss = DINOLoss(student_temp=0.1, teacher_temp=0.04)(s[:2], s[2:], t, torch.zeros(1, 3))
    assert loss.item() == pytest.approx(1.003109, abs=1e-5)


def _dino_loop(s_global, s_local, teacher, center, tau_s, tau_t):
    """facebookresearch/dino DINOLoss.forward, pair by pair."""
    student = [x / tau_s for x in torch.cat([s_global, s_local])]
    teacher_p = [F.softmax((x - center) / tau_t, dim=-1) for x in teacher]
    total, terms = 0.0, 0
    for iq, q in enumerate(teacher_p):
        for v, s in enumerate(student):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


@pytest.mark.parametrize("n_local", [0, 1, 4])
def test_matches_official_loop_values_and_gradients(n_local):
    gen = torch.Generator().manual_seed(n_local)
    sg = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    sl = torch.randn(n_local, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    c = torch.randn(1, 7, generator=gen, dtype=torch.float64) * 0.1
    loss = DINOLoss(student_temp=0.1, teacher_temp=0.07)(sg, sl, t, c)
    ref = _dino_loop(sg, sl, t, c, 0.1, 0.07)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    inputs = (sg, sl) if n_local else (sg,)
    for got, want in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)


def test_teacher_is_detached_and_forward_mutates_nothing():
    gen = torch.Generator().manual_seed(5)
    t = torch.randn(2, 2, 5, generator=gen, requires_grad=True)
    loss_fn = DINOLoss()
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    loss = loss_fn(torch.randn(2, 2, 5, generator=gen, requires_grad=True), torch.randn(2, 2, 5, generator=gen),
                   t, torch.zeros(1, 5))
    assert torch.autograd.grad(loss, t, allow_unused=True)[0] is None
    assert all(torch.equal(before[k], v) for k, v in loss_fn.state_dict().items())


def test_teacher_temperature_buffer_follows_the_schedule():
    spe, epochs = 10, 100
    loss_fn = DINOLoss(teacher_temp={"linear": [0.04, 0.07], "until": "30ep"})
    assert loss_fn.teacher_temp_now.dtype == torch.float32
    assert loss_fn.teacher_temp_now.item() == pytest.approx(0.04)  # step 0's value before any update
    loss_fn.bind(epochs * spe, spe)
    reference = Schedule.parse({"linear": [0.04, 0.07], "until": "30ep"}).bind(epochs * spe, spe)
    table = torch.linspace(0.04, 0.07, 30, dtype=torch.float64)  # DINO's np.linspace per epoch
    for step in [0, 8, 9, 10, 150, 288, 289, 290, 500]:
        loss_fn.update(step)
        assert loss_fn.teacher_temp_now.item() == pytest.approx(reference.at(step + 1), rel=1e-6)
        epoch = (step + 1) // spe
        assert loss_fn.teacher_temp_now.item() == pytest.approx(table[min(epoch, 29)].item(), rel=1e-6)
    # forward uses the buffer: at temperature 0.07 (after warm-up) it equals the official loop at 0.07
    gen = torch.Generator().manual_seed(6)
    s, t = torch.randn(3, 2, 4, generator=gen), torch.randn(2, 2, 4, generator=gen)
    c = torch.zeros(1, 4)
    assert loss_fn(s[:2], s[2:], t, c).item() == pytest.approx(_dino_loop(s[:2], s[2:], t, c, 0.1, 0.07).item(),
                                                              rel=1e-5)


def test_temperature_state_survives_a_checkpoint():
    a = DINOLoss(teacher_temp={"linear": [0.04, 0.07], "until": "3ep"}).bind(20, 2)
    a.update(1)  # the next forward is step 2, epoch 1
    b = DINOLoss(teacher_temp={"linear": [0.04, 0.07], "until": "3ep"})
    b.load_state_dict(a.state_dict())
    assert b.teacher_temp_now.item() == pytest.approx(0.055)  # epoch 1 of linspace(0.04, 0.07, 3)


def test_constant_default_and_errors():
    loss_fn = DINOLoss()
    loss_fn.update(1000)  # a constant needs no binding
    assert loss_fn.teacher_temp_now.item() == pytest.approx(0.04)
    with pytest.raises(RuntimeError, match="bind"):
        DINOLoss(teacher_temp={"cosine": [0.04, 0.07]}).update(0)
    for bad in [dict(student_temp=0.0), dict(teacher_temp=-0.04), dict(teacher_temp={"linear": [0.0, 0.07]}),
                dict(teacher_temp={"nonsense": 1})]:
        with pytest.raises(ValueError, match="loss.dino"):
            DINOLoss(**bad)
    with pytest.raises(ValueError, match="loss.dino"):
        DINOLoss()(torch.zeros(3, 2, 4), torch.zeros(0, 2, 4), torch.zeros(3, 2, 4), torch.zeros(1, 4))


def test_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(7)
    s, t = torch.randn(4, 3, 16, generator=gen), torch.randn(2, 3, 16, generator=gen)
    loss_fn = DINOLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_fn(s[:2], s[2:], t, torch.zeros(1, 16))
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss_fn(s[:2], s[2:], t, torch.zeros(1, 16)).item(), rel=1e-6)


def test_compiles_once_while_the_temperature_changes():
    """forward reads the temperature from a buffer, so advancing it does not recompile (torch.compile)."""
    loss_fn = DINOLoss(teacher_temp={"linear": [0.04, 0.07], "until": "3ep"}).bind(10, 2)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    gen = torch.Generator().manual_seed(8)
    s, t = torch.randn(3, 2, 6, generator=gen), torch.randn(2, 2, 6, generator=gen)
    c = torch.zeros(1, 6)
    for step in range(6):
        want = _dino_loop(s[:2], s[2:], t, c, 0.1, loss_fn.teacher_temp.at(step))
        assert compiled(s[:2], s[2:], t, c).item() == pytest.approx(want.item(), rel=1e-5)
        loss_fn.update(step)
    assert len(graphs) == 1
