"""loss.info_nce (MoCo v1/v2), loss.nt_xent (SimCLR), loss.moco_v3 on one process.

Checked against test vectors computed from the official code and against second formulations written here: a per-row
loop for InfoNCE and MoCo v3, and lightly's deleted-diagonal NT-Xent (which is half the official value).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from composer.blocks.losses.info_nce import InfoNCE
from composer.blocks.losses.moco_v3 import MoCoV3Loss
from composer.blocks.losses.nt_xent import NTXent


def _unit_orthogonal_queue(k: int, c: int, gen: torch.Generator) -> torch.Tensor:
    """K unit rows orthogonal to e_0 (zero first coordinate)."""
    rows = torch.randn(k, c, generator=gen)
    rows[:, 0] = 0
    return F.normalize(rows, dim=1)


# ---------------------------------------------------------------- MoCo v1/v2 InfoNCE

@pytest.mark.parametrize("k, t, expected", [(4, 1.0, 0.904832), (65536, 0.2, 6.092617)])
def test_info_nce_vector(k, t, expected):
    gen = torch.Generator().manual_seed(0)
    q = F.one_hot(torch.zeros(3, dtype=torch.long), 8).float()  # q = k = e_0, unit
    loss = InfoNCE(temperature=t)(q, q.clone(), _unit_orthogonal_queue(k, 8, gen))
    # float32 sums 65537 exponentials: agreement to 1e-5 relative (3e-5 absolute at K = 65536)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(math.log(1 + k * math.exp(-1 / t)), abs=1e-6)


def _info_nce_loop(q, k, queue, t):
    """-log(e^{q.k/T} / (e^{q.k/T} + sum_j e^{q.n_j/T})), one row at a time, mean over rows."""
    losses = []
    for i in range(q.shape[0]):
        pos = torch.exp(torch.dot(q[i], k[i]) / t)
        neg = sum(torch.exp(torch.dot(q[i], n) / t) for n in queue)
        losses.append(-torch.log(pos / (pos + neg)))
    return torch.stack(losses).mean()


def test_info_nce_matches_loop_values_and_gradients():
    gen = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(5, 6, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    k = F.normalize(torch.randn(5, 6, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    queue = F.normalize(torch.randn(7, 6, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    loss = InfoNCE(temperature=0.2)(q, k, queue)
    gq, gk = torch.autograd.grad(loss, (q, k))
    ref = _info_nce_loop(q, k, queue, 0.2)
    rq, rk = torch.autograd.grad(ref, (q, k))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(gq.double(), rq, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gk.double(), rk, rtol=1e-4, atol=1e-6)
    # the queue is detached as in the official code (queue.clone().detach())
    assert torch.autograd.grad(InfoNCE()(q, k, queue), queue, allow_unused=True)[0] is None


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="loss.info_nce"):
        InfoNCE(temperature=0.0)
    with pytest.raises(ValueError, match="loss.info_nce"):
        InfoNCE()(torch.ones(2, 4), torch.ones(2, 4), torch.ones(3, 5))


# ---------------------------------------------------------------- SimCLR NT-Xent

H1 = [[0.1257, -0.1321, 0.6404], [0.1049, -0.5357, 0.3616], [1.304, 0.9471, -0.7037], [-1.2654, -0.6233, 0.0413]]
H2 = [[-2.325, -0.2188, -1.2459], [-0.7323, -0.5443, -0.3163], [0.4116, 1.0425, -0.1285], [1.3665, -0.6652, 0.3515]]


def test_nt_xent_identity_vector():
    z = torch.eye(4).expand(2, 4, 4)  # h1 = h2 = I_4
    loss = NTXent(temperature=0.5)(z)
    assert loss.item() == pytest.approx(1.188875, abs=1e-5)
    assert loss.item() == pytest.approx(2 * math.log(1 + 2 * 3 * math.exp(-1 / 0.5)), abs=1e-5)


def test_nt_xent_non_symmetric_vector():
    z = torch.tensor([H1, H2])
    assert NTXent(temperature=0.5)(z).item() == pytest.approx(4.988345, abs=1e-5)
    # swapping the views swaps loss_a and loss_b: same sum (a transposed implementation would differ)
    assert NTXent(temperature=0.5)(z.flip(0)).item() == pytest.approx(4.988345, abs=1e-5)


def _nt_xent_lightly(z, t):
    """lightly's NTXentLoss: (2N, 2N-1) logits with the diagonal deleted, one CE over 2N rows (half the official)."""
    n = z.shape[1]
    h = F.normalize(torch.cat([z[0], z[1]]), dim=1)  # (2N, D)
    sim = h @ h.T / t
    off_diag = ~torch.eye(2 * n, dtype=torch.bool)
    logits = sim[off_diag].view(2 * n, 2 * n - 1)
    # the partner of row i is i+N (or i-N); after deleting column i it sits at index partner-1 when partner > i
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    target = torch.where(partner > torch.arange(2 * n), partner - 1, partner)
    return F.cross_entropy(logits, target)


def test_nt_xent_is_twice_lightly_values_and_gradients():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = NTXent(temperature=0.5)(z)
    (g,) = torch.autograd.grad(loss, z)
    ref = 2 * _nt_xent_lightly(z, 0.5)
    (rg,) = torch.autograd.grad(ref, z)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-6)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="loss.nt_xent"):
        NTXent(temperature=-1.0)
    with pytest.raises(ValueError, match="loss.nt_xent"):
        NTXent()(torch.ones(3, 2, 4))


# ---------------------------------------------------------------- MoCo v3

@pytest.mark.parametrize("t, expected", [(1.0, 2.974674), (0.2, 0.016010)])
def test_moco_v3_vector(t, expected):
    e = torch.eye(4).expand(2, 4, 4)  # q_i = k_i = e_i for both views
    loss = MoCoV3Loss(temperature=t)(e, e.clone())
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(2 * 2 * t * math.log(1 + 3 * math.exp(-1 / t)), abs=1e-6)


def _moco_v3_loop(q, k, t):
    """ctr(q0, k1) + ctr(q1, k0), each mean_i -log softmax(q_i . k_j / T)[i] * 2T, written per row."""
    def ctr(qv, kv):
        qv, kv = F.normalize(qv, dim=1), F.normalize(kv, dim=1)
        rows = []
        for i in range(qv.shape[0]):
            s = torch.stack([torch.dot(qv[i], kv[j]) / t for j in range(kv.shape[0])])
            rows.append(torch.logsumexp(s, 0) - s[i])
        return torch.stack(rows).mean() * 2 * t
    return ctr(q[0], k[1]) + ctr(q[1], k[0])


def test_moco_v3_matches_loop_values_and_gradients():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = MoCoV3Loss(temperature=0.2)(q, k)
    (g,) = torch.autograd.grad(loss, q)
    ref = _moco_v3_loop(q, k.detach(), 0.2)
    (rg,) = torch.autograd.grad(ref, q)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-6)
    # the keys never carry gradient (concat_all_gather is gradient-free), even on one process
    assert torch.autograd.grad(MoCoV3Loss()(q, k), k, allow_unused=True)[0] is None


def test_moco_v3_rejects_bad_input():
    with pytest.raises(ValueError, match="loss.moco_v3"):
        MoCoV3Loss(temperature=0)
    with pytest.raises(ValueError, match="loss.moco_v3"):
        MoCoV3Loss()(torch.ones(2, 3, 4), torch.ones(2, 4, 4))


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize("make, args", [
    (lambda: InfoNCE(), lambda g: (torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g),
                                   torch.randn(16, 8, generator=g))),
    (lambda: NTXent(), lambda g: (torch.randn(2, 4, 8, generator=g),)),
    (lambda: MoCoV3Loss(temperature=0.2), lambda g: (torch.randn(2, 4, 8, generator=g),
                                                     torch.randn(2, 4, 8, generator=g))),
])
def test_float32_under_bf16_autocast(make, args):
    inputs = args(torch.Generator().manual_seed(4))
    loss_fn = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_fn(*inputs)
    assert low.dtype == torch.float32 and low.ndim == 0
    assert low.item() == pytest.approx(loss_fn(*inputs).item(), rel=1e-6)


@pytest.mark.parametrize("make, args", [
    (lambda: InfoNCE(), lambda g: (torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g),
                                   torch.randn(16, 8, generator=g))),
    (lambda: NTXent(), lambda g: (torch.randn(2, 4, 8, generator=g),)),
    (lambda: MoCoV3Loss(), lambda g: (torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g))),
])
def test_traces_as_one_graph(make, args):
    inputs = args(torch.Generator().manual_seed(5))
    loss_fn = make()
    compiled = torch.compile(loss_fn, fullgraph=True, backend=lambda gm, _: gm.forward)
    assert compiled(*inputs).item() == pytest.approx(loss_fn(*inputs).item(), rel=1e-6)
