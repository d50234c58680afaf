"""loss.clip, loss.siglip, loss.token_focal (with giou_loss and centerness_target), ops.scalar on one process.

Checked against test vectors computed from the official code and second formulations written here: per-row loops
for CLIP, an explicit per-pair double loop for SigLIP, GLIP's CPU focal formula per element, torchvision's GIoU.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from composer.blocks.boxes import centerness_target, giou_loss
from composer.blocks.losses.clip import CLIPLoss
from composer.blocks.losses.focal import TokenSigmoidFocalLoss, sigmoid_focal_loss
from composer.blocks.losses.siglip import SigLIPLoss
from composer.blocks.scalars import Scalar

# ---------------------------------------------------------------- CLIP


def test_clip_vector():
    eye = torch.eye(4)
    loss = CLIPLoss()(eye, eye.clone(), torch.tensor(0.0))
    assert loss.item() == pytest.approx(0.743668, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(1 + 3 / math.e), abs=1e-6)


def _clip_loop(img, txt, log_scale, bias):
    """Row by row: image i's caption among all texts, text i's image among all images, averaged."""
    img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    s = log_scale.exp()
    n = img.shape[0]
    i2t = [-F.log_softmax(torch.stack([s * img[i] @ txt[j] + bias for j in range(n)]), 0)[i] for i in range(n)]
    t2i = [-F.log_softmax(torch.stack([s * txt[i] @ img[j] + bias for j in range(n)]), 0)[i] for i in range(n)]
    return (torch.stack(i2t).mean() + torch.stack(t2i).mean()) / 2


@pytest.mark.parametrize("with_bias", [False, True])
def test_clip_matches_loop_values_and_gradients(with_bias):
    gen = torch.Generator().manual_seed(10)
    img = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(2.659260, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    loss = CLIPLoss()(img, txt, scale, bias if with_bias else None)
    ref = _clip_loop(img, txt, scale, bias if with_bias else 0.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    inputs = (img, txt, scale) + ((bias,) if with_bias else ())
    for got, want in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_clip_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="loss.clip"):
        CLIPLoss()(torch.ones(4, 3), torch.ones(5, 3), torch.tensor(0.0))


# ---------------------------------------------------------------- SigLIP


def test_siglip_vector():
    eye = torch.eye(4)
    loss = SigLIPLoss()(eye, eye.clone(), torch.tensor(math.log(10)), torch.tensor(-10.0))
    assert loss.item() == pytest.approx(0.693283, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(2) + 3 * math.log(1 + math.exp(-10)), abs=1e-6)


def _siglip_pairs(img, txt, log_t, b):
    """-(1/N) sum_i sum_j log sigmoid(z_ij (t x_i . y_j + b)), one pair at a time (big_vision normalisation)."""
    x = img / (img.norm(dim=1, keepdim=True) + 1e-8)
    y = txt / (txt.norm(dim=1, keepdim=True) + 1e-8)
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            z = 1.0 if i == j else -1.0
            total = total - torch.log(torch.sigmoid(z * (log_t.exp() * torch.dot(x[i], y[j]) + b)))
    return total / x.shape[0]


@pytest.mark.parametrize("chunk_size", [None, 0, 1, 3, 100])
def test_siglip_matches_pair_loop_for_every_chunk_size(chunk_size):
    gen = torch.Generator().manual_seed(11)
    img = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    log_t = torch.tensor(math.log(10), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.71, dtype=torch.float64, requires_grad=True)
    loss = SigLIPLoss(chunk_size=chunk_size)(img, txt, log_t, b)
    ref = _siglip_pairs(img, txt, log_t, b)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    inputs = (img, txt, log_t, b)
    for got, want in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_siglip_rejects_bad_input():
    with pytest.raises(ValueError, match="loss.siglip"):
        SigLIPLoss(chunk_size=-1)
    with pytest.raises(ValueError, match="loss.siglip"):
        SigLIPLoss()(torch.ones(4, 3), torch.ones(4, 2), torch.tensor(0.0), torch.tensor(0.0))


# ---------------------------------------------------------------- GLIP token focal loss

BIAS0 = -math.log((1 - 0.01) / 0.01)  # GLIP's prior-probability bias init, -4.595


@pytest.mark.parametrize("x, y, expected, tol", [(0.0, 1.0, 0.043322, 1e-6), (0.0, 0.0, 0.129965, 1e-6),
                                                 (BIAS0, 0.0, 7.54e-7, 1e-9), (BIAS0, 1.0, 1.128382, 1e-6)])
def test_focal_vectors(x, y, expected, tol):
    assert sigmoid_focal_loss(torch.tensor([x]), torch.tensor([y])).item() == pytest.approx(expected, abs=tol)


def _focal_loop(logits, targets, text_mask, positive, alpha=0.25, gamma=2.0):
    """GLIP's sigmoid_focal_loss_cpu terms per element: -alpha (1-p)^g log p  |  -(1-alpha) p^g log(1-p)."""
    total = 0.0
    b_, a_, t_ = logits.shape
    for b in range(b_):
        for a in range(a_):
            for t in range(t_):
                if text_mask[b, t] == 0:
                    continue
                p = torch.sigmoid(logits[b, a, t])
                if targets[b, a, t] == 1:
                    total = total - alpha * (1 - p) ** gamma * torch.log(p)
                else:
                    total = total - (1 - alpha) * p ** gamma * torch.log(1 - p)
    return total / max(int(positive.sum()), 1)


def _grounding_batch(gen, dtype=torch.float64):
    b, a, t = 2, 5, 6
    logits = (torch.randn(b, a, t, generator=gen, dtype=dtype) * 2).requires_grad_()
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    positive = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    targets = torch.zeros(b, a, t, dtype=dtype)
    for bi, ai in positive.nonzero().tolist():  # matched anchors: a phrase of one or two real tokens
        targets[bi, ai, ai % 3: ai % 3 + 1 + bi] = 1
    targets[~positive] = F.one_hot(torch.tensor(t - 1), t).to(dtype)  # unmatched: GLIP's "no object" slot
    return logits, targets, text_mask, positive


def test_token_focal_matches_loop_values_and_gradients():
    logits, targets, text_mask, positive = _grounding_batch(torch.Generator().manual_seed(12))
    ref = _focal_loop(logits, targets, text_mask, positive)
    (rg,) = torch.autograd.grad(ref, logits)
    for pos_port in [positive, None]:  # explicit positives, or derived from the targets (last slot = no object)
        loss = TokenSigmoidFocalLoss()(logits, targets, text_mask, pos_port)
        (g,) = torch.autograd.grad(loss, logits)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-7)
    # padded tokens get no gradient
    assert torch.all(rg[0, :, 4:] == 0) and torch.all(g[0, :, 4:] == 0)


def test_token_focal_normaliser_is_at_least_one():
    logits, targets, text_mask, _ = _grounding_batch(torch.Generator().manual_seed(13))
    none = torch.zeros(2, 5, dtype=torch.bool)
    loss = TokenSigmoidFocalLoss()(logits, targets, text_mask, none)
    summed = (sigmoid_focal_loss(logits, targets) * text_mask[:, None, :]).sum()
    assert loss.item() == pytest.approx(summed.item(), rel=1e-6)


def test_token_focal_rejects_bad_parameters():
    for bad in [dict(alpha=1.5), dict(gamma=-1.0)]:
        with pytest.raises(ValueError, match="loss.token_focal"):
            TokenSigmoidFocalLoss(**bad)


def test_giou_loss_hand_values():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1], [2, 0, 0, 2]])
    target = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 3, 3], [0, 0, 2, 2]])
    expected = torch.tensor([0.0, 1 - 1 / 7 + 2 / 9, 1 + 7 / 9, 1.0])  # same; overlap; disjoint; inverted pred
    torch.testing.assert_close(giou_loss(pred, target), expected, atol=1e-6, rtol=0)


def test_giou_loss_matches_torchvision():
    gen = torch.Generator().manual_seed(14)
    xy = torch.rand(20, 2, 2, generator=gen) * 10
    wh = torch.rand(20, 2, 2, generator=gen) * 5 + 0.1
    pred, target = torch.cat([xy[:, 0], xy[:, 0] + wh[:, 0]], 1), torch.cat([xy[:, 1], xy[:, 1] + wh[:, 1]], 1)
    torch.testing.assert_close(giou_loss(pred, target), generalized_box_iou_loss(pred, target), atol=1e-5, rtol=1e-5)


def test_centerness_target():
    points = torch.tensor([[2.0, 1.0], [1.0, 1.0], [0.5, 1.5]])
    boxes = torch.tensor([[0.0, 0, 4, 2], [0, 0, 4, 2], [0, 0, 4, 2]])
    expected = torch.tensor([1.0, math.sqrt(1 / 3), math.sqrt(0.5 / 3.5 * 0.5 / 1.5)])
    torch.testing.assert_close(centerness_target(points, boxes), expected)


# ---------------------------------------------------------------- ops.scalar


def test_scalar_forward_is_the_parameter_and_update_clamps():
    s = Scalar(init=2.659260, min=0.0, max=math.log(100))
    out = s()
    assert out is s.value and out.ndim == 0 and out.requires_grad
    assert out.item() == pytest.approx(2.659260)
    with torch.no_grad():
        s.value.fill_(7.0)
    s.update(0)
    assert s().item() == pytest.approx(4.605170, abs=1e-6)
    with torch.no_grad():
        s.value.fill_(-3.0)
    s.update(1)
    assert s().item() == 0.0
    free = Scalar(init=-10.0)  # SigLIP's bias: no bounds
    with torch.no_grad():
        free.value.fill_(-50.0)
    free.update(0)
    assert free().item() == -50.0


def test_scalar_rejects_bad_parameters():
    for bad in [dict(init=float("nan")), dict(init=0.0, min=1.0, max=0.5), dict(init=5.0, max=4.6)]:
        with pytest.raises(ValueError, match="ops.scalar"):
            Scalar(**bad)


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("loss_fn", [CLIPLoss(), SigLIPLoss(chunk_size=2)])
def test_float32_under_bf16_autocast(loss_fn):
    gen = torch.Generator().manual_seed(15)
    img, txt = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    scale, bias = torch.tensor(2.3), torch.tensor(-1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_fn(img, txt, scale, bias)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss_fn(img, txt, scale, bias).item(), rel=1e-6)


_G = torch.Generator().manual_seed(16)


@pytest.mark.parametrize("loss_fn, args", [
    (CLIPLoss(), (torch.randn(4, 8, generator=_G), torch.randn(4, 8, generator=_G), torch.tensor(2.6))),
    (SigLIPLoss(chunk_size=3), (torch.randn(4, 8, generator=_G), torch.randn(4, 8, generator=_G),
                                torch.tensor(2.3), torch.tensor(-1.0))),
    (TokenSigmoidFocalLoss(), (torch.randn(2, 5, 6, generator=_G),
                               (torch.rand(2, 5, 6, generator=_G) > 0.7).float(), torch.ones(2, 6))),
])
def test_traces_as_one_graph(loss_fn, args):
    compiled = torch.compile(loss_fn, fullgraph=True, backend=lambda gm, _: gm.forward)
    assert compiled(*args).item() == pytest.approx(loss_fn(*args).item(), rel=1e-6)
