"""GLIP's parts: anchors, box codes, ATSS, targets, box-aware resize, FPN, the alignment head and box losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from dist_helpers import spawn

from composer.blocks.boxes import decode_boxes, encode_boxes, giou_loss
from composer.blocks.grounding import (
    ATSSTargets,
    FPNEncoder,
    GLIPHead,
    GroundingAugment,
    atss_assign,
    make_anchors,
)
from composer.blocks.losses.grounding import CenternessLoss, GIoULoss
from composer.blocks.text import ByteTokenizer


# ------------------------------------------------------------------ anchors, codes, ATSS
def test_anchors_cover_each_level_row_major():
    anchors, counts = make_anchors(16, [4, 8], anchor_scale=2.0)
    assert counts == [16, 4] and anchors.shape == (20, 4)
    assert anchors[0].tolist() == [-2.0, -2.0, 6.0, 6.0]  # centre (2, 2), side 2 x 4
    assert anchors[1].tolist() == [2.0, -2.0, 10.0, 6.0]  # next column first
    assert anchors[16].tolist() == [-4.0, -4.0, 12.0, 12.0]  # level 2: centre (4, 4), side 16


def test_box_codes_round_trip_and_glip_weights():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = torch.tensor([[2.0, 1.0, 14.0, 9.0]])  # centre (8, 5), 12 x 8
    codes = encode_boxes(box, anchors)
    expected = [10 * (8 - 5) / 10, 10 * (5 - 5) / 10, 5 * math.log(12 / 10), 5 * math.log(8 / 10)]
    torch.testing.assert_close(codes[0], torch.tensor(expected))
    torch.testing.assert_close(decode_boxes(codes, anchors), box)
    torch.testing.assert_close(decode_boxes(torch.zeros(1, 4), anchors), anchors)
    huge = decode_boxes(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchors)  # dw clamped at log(1000/16)
    assert math.isclose(float(huge[0, 2] - huge[0, 0]), 10 * 1000 / 16, rel_tol=1e-5)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _atss_loop(anchors, counts, boxes, topk):
    """ATSS written box by box from GLIP loss.py · prepare_targets, plain Python."""
    anchors, boxes = anchors.tolist(), boxes.tolist()
    claims = {}
    for j, g in enumerate(boxes):
        gx, gy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
        cands, start = [], 0
        for count in counts:
            level = range(start, start + count)
            dist = sorted(level, key=lambda i: math.hypot((anchors[i][0] + anchors[i][2]) / 2 - gx,
                                                          (anchors[i][1] + anchors[i][3]) / 2 - gy))
            cands += dist[:min(topk, count)]
            start += count
        ious = [_iou(anchors[i], g) for i in cands]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, v in zip(cands, ious):
            cx, cy = (anchors[i][0] + anchors[i][2]) / 2, (anchors[i][1] + anchors[i][3]) / 2
            inside = min(cx - g[0], cy - g[1], g[2] - cx, g[3] - cy) > 0.01
            if v >= mean + std and inside and (i not in claims or v > claims[i][1]):
                claims[i] = (j, v)
    return [claims[i][0] if i in claims else -1 for i in range(len(anchors))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atss_matches_the_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    anchors, counts = make_anchors(32, [4, 8], anchor_scale=4.0)
    xy = torch.rand(4, 2, generator=g) * 20
    wh = 4 + torch.rand(4, 2, generator=g) * 12
    boxes = torch.cat([xy, xy + wh], dim=1)
    got = atss_assign(anchors, counts, boxes, topk=9)
    assert got.tolist() == _atss_loop(anchors, counts, boxes, 9)
    assert (got >= 0).sum() > 0


def test_atss_without_boxes_is_all_negative():
    anchors, counts = make_anchors(16, [4], 4.0)
    assert (atss_assign(anchors, counts, torch.zeros(0, 4), 9) == -1).all()


def test_targets_rows_no_object_token_and_centerness():
    tok = ByteTokenizer(context_length=40)
    caption = "a red star and a small blue ring"
    text = tok([caption], [[[[2, 10]], [[17, 32]]]])
    boxes = [torch.tensor([[2.0, 2.0, 18.0, 18.0], [20.0, 20.0, 30.0, 30.0]])]
    block = ATSSTargets(size=32, strides=[4, 8], anchor_scale=4.0, topk=9)
    t = block(boxes, text.positive)
    a = t.anchors.shape[0]
    assert t.tokens.shape == (1, a, 40) and t.boxes.shape == (1, a, 4) and t.positive.shape == (1, a)
    index = atss_assign(t.anchors, block.counts, boxes[0], 9)
    assert t.positive[0].tolist() == (index >= 0).float().tolist()
    for i in range(a):
        if index[i] >= 0:
            assert torch.equal(t.tokens[0, i], text.positive[0][index[i]])
            assert torch.equal(t.boxes[0, i], boxes[0][index[i]])
            cx, cy = ((t.anchors[i, :2] + t.anchors[i, 2:]) / 2).tolist()
            x1, y1, x2, y2 = boxes[0][index[i]].tolist()
            c = math.sqrt(min(cx - x1, x2 - cx) / max(cx - x1, x2 - cx) * min(cy - y1, y2 - cy) / max(cy - y1, y2 - cy))
            assert math.isclose(float(t.centerness[0, i]), c, rel_tol=1e-5)
        else:
            assert t.tokens[0, i].nonzero().flatten().tolist() == [39]  # GLIP's "no object" slot
            assert t.centerness[0, i] == 0
    assert set(index[index >= 0].tolist()) == {0, 1}


def test_targets_reject_bad_parameters():
    with pytest.raises(ValueError, match="targets.atss"):
        ATSSTargets(size=30, strides=[4])
    with pytest.raises(ValueError, match="targets.atss"):
        ATSSTargets(size=32, strides=[4], topk=0)


# ------------------------------------------------------------------ resize with boxes
def test_resize_scales_boxes_and_flip_mirrors_them():
    image = torch.zeros(1, 3, 20, 40, dtype=torch.uint8)
    image[0, :, 5:10, 0:8] = 255  # a white patch at x in [0, 8), y in [5, 10)
    boxes = [torch.tensor([[0.0, 5.0, 8.0, 10.0]])]
    aug = GroundingAugment(size=40, flip=0.0)
    out = aug(image, boxes)
    torch.testing.assert_close(out.boxes[0], torch.tensor([[0.0, 10.0, 8.0, 20.0]]))  # x / 1, y * 2
    flipped = GroundingAugment(size=40, flip=1.0)(image, boxes)
    torch.testing.assert_close(flipped.boxes[0], torch.tensor([[32.0, 10.0, 40.0, 20.0]]))
    torch.testing.assert_close(flipped.image, out.image.flip(-1))
    still = GroundingAugment(size=40, flip=1.0).eval()(image, boxes)  # eval: deterministic
    torch.testing.assert_close(still.boxes[0], out.boxes[0])


def test_resize_rejects_mismatched_boxes():
    with pytest.raises(ValueError, match="augment.grounding"):
        GroundingAugment(size=8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [torch.zeros(0, 4)])


# ------------------------------------------------------------------ FPN and head
def test_fpn_levels_and_strides():
    fpn = FPNEncoder(arch="resnet10t", out_indices=[1, 2], channels=16)
    out = fpn(torch.randn(2, 3, 32, 32))
    assert [tuple(x.shape) for x in out.levels] == [(2, 16, 8, 8), (2, 16, 4, 4)]
    assert fpn.strides == [4, 8] and out.pooled.shape == (2, fpn.dim)


def test_head_initial_logits_are_the_prior():
    torch.manual_seed(0)
    head = GLIPHead(channels=16, text_dim=8, levels=2, num_convs=1, groups=4)
    assert math.isclose(float(head.bias0.detach()), -math.log(99), rel_tol=1e-6)
    torch.nn.init.zeros_(head.token_proj.weight)
    torch.nn.init.zeros_(head.token_proj.bias)
    out = head([torch.randn(2, 16, 4, 4), torch.randn(2, 16, 2, 2)], torch.randn(2, 5, 8))
    assert out.logits.shape == (2, 20, 5) and out.regression.shape == (2, 20, 4) and out.centerness.shape == (2, 20)
    torch.testing.assert_close(out.logits.sigmoid(), torch.full((2, 20, 5), 0.01))


def test_head_logits_match_the_formula():
    torch.manual_seed(0)
    head = GLIPHead(channels=8, text_dim=6, levels=1, num_convs=0, groups=4)
    with torch.no_grad():
        head.bias_lang.normal_()
        head.log_scale.fill_(0.3)
    x, tokens = torch.randn(1, 8, 2, 3), torch.randn(1, 4, 6)
    out = head([x], tokens)
    e = F.normalize(tokens[0], dim=-1)
    proj = e / 2 @ head.token_proj.weight.T + head.token_proj.bias
    for loc, (i, j) in enumerate([(i, j) for i in range(2) for j in range(3)]):  # row-major locations
        expected = x[0, :, i, j] @ proj.T / math.exp(0.3) + e @ head.bias_lang + head.bias0
        torch.testing.assert_close(out.logits[0, loc], expected, atol=1e-5, rtol=1e-5)
    reg = head.bbox_pred(x) * head.scales[0].scale
    torch.testing.assert_close(out.regression[0, 4], reg[0, :, 1, 1])


def test_head_rejects_bad_parameters():
    with pytest.raises(ValueError, match="head.glip"):
        GLIPHead(channels=10, groups=4)
    with pytest.raises(ValueError, match="head.glip"):
        GLIPHead(prior_prob=1.0)


# ------------------------------------------------------------------ box losses
def _box_case(seed=0, b=2, a=6):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat([torch.rand(a, 2, generator=g) * 10, torch.zeros(a, 2)], 1)
    anchors[:, 2:] = anchors[:, :2] + 4
    boxes = anchors[None].repeat(b, 1, 1) + torch.rand(b, a, 4, generator=g)
    reg = torch.randn(b, a, 4, generator=g, requires_grad=True)
    positive = (torch.rand(b, a, generator=g) > 0.4).float()
    centerness = torch.rand(b, a, generator=g) * positive
    return reg, anchors, boxes, positive, centerness


def test_giou_loss_matches_the_loop():
    reg, anchors, boxes, positive, centerness = _box_case()
    got = GIoULoss()(reg, anchors, boxes, positive, centerness)
    num, den = 0.0, 0.0
    for i in range(reg.shape[0]):
        for k in range(reg.shape[1]):
            if positive[i, k]:
                pred = decode_boxes(reg[i, k][None], anchors[k][None])
                num = num + centerness[i, k] * giou_loss(pred, boxes[i, k][None])[0]
                den += float(centerness[i, k])
    torch.testing.assert_close(got, num / den)


def test_centerness_loss_matches_the_loop():
    reg, _, _, positive, target = _box_case(1)
    logits = reg[..., 0]
    got = CenternessLoss()(logits, target, positive)
    terms = [F.binary_cross_entropy_with_logits(logits[i, k], target[i, k])
             for i in range(logits.shape[0]) for k in range(logits.shape[1]) if positive[i, k]]
    torch.testing.assert_close(got, torch.stack(terms).sum() / max(len(terms), 1))


def test_box_losses_without_positives_are_zero_with_a_gradient():
    reg, anchors, boxes, positive, centerness = _box_case()
    zero = torch.zeros_like(positive)
    loss = GIoULoss()(reg, anchors, boxes, zero, centerness * 0) + CenternessLoss()(reg[..., 0], zero, zero)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert reg.grad is not None and torch.count_nonzero(reg.grad) == 0


# ------------------------------------------------------------------ two processes = one
def _dist_worker(rank, world, out_path):
    reg, anchors, boxes, positive, centerness = _box_case(3, b=4)
    half = slice(2 * rank, 2 * rank + 2)
    r = reg.detach()[half].clone().requires_grad_(True)
    loss = GIoULoss()(r, anchors, boxes[half], positive[half], centerness[half]) + \
        CenternessLoss()(r[..., 0], centerness[half], positive[half])
    loss.backward()
    grads = [torch.zeros_like(r.grad) for _ in range(world)]
    torch.distributed.all_gather(grads, r.grad)
    losses = [torch.zeros(()) for _ in range(world)]
    torch.distributed.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"loss": torch.stack(losses).mean(), "grad": torch.cat(grads) / world}, out_path)


@pytest.mark.dist
def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "dist.pt"
    spawn(_dist_worker, 2, str(out))
    got = torch.load(out)
    reg, anchors, boxes, positive, centerness = _box_case(3, b=4)
    loss = GIoULoss()(reg, anchors, boxes, positive, centerness) + CenternessLoss()(reg[..., 0], centerness, positive)
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach())  # mean of the ranks' losses = the global loss
    torch.testing.assert_close(got["grad"], reg.grad)  # DDP's gradient mean = the global gradient
