"""Masked-modelling losses: MAE pixel loss, I-JEPA smooth-L1, BEiT masked-token CE ."""
import math

import pytest
import torch
import torch.nn.functional as F

from composer.blocks.losses.beit import MaskedTokenCE
from composer.blocks.losses.jepa import SmoothL1Loss
from composer.blocks.losses.mae import MAELoss


def _biased_norm_pix_loss(pred, patch):
    """A hand-written norm-pix loss with the biased variance, for contrast (one patch, mask = 1)."""
    mean = patch.mean()
    var = ((patch - mean) ** 2).mean()
    return ((pred - (patch - mean) / (var + 1e-6).sqrt()) ** 2).mean()


def test_mae_norm_pix_vector_uses_unbiased_variance():
    torch.manual_seed(0)
    image = torch.randn(1, 3, 16, 16)  # one patch of 768 values
    pred = torch.zeros(1, 1, 768)
    loss = MAELoss(norm_pix=True)(pred, image, torch.ones(1, 1))
    assert abs(loss.item() - 0.998698) < 1e-4  # 767/768
    biased = _biased_norm_pix_loss(pred.flatten(), image.permute(0, 2, 3, 1).flatten())
    assert abs(biased.item() - 1.0) < 1e-5 and abs(loss.item() - biased.item()) > 1e-3


def test_mae_loss_matches_hand_formula_and_ignores_kept_patches():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 8, 8)  # patch 4 → 4 patches of 48 values
    pred = torch.randn(2, 4, 48)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    total, count = 0.0, 0
    for b in range(2):
        for i in range(2):
            for j in range(2):
                if mask[b, i * 2 + j]:
                    patch = image[b, :, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4].permute(1, 2, 0).flatten()  # (p, q, c)
                    target = (patch - patch.mean()) / (patch.var(unbiased=True) + 1e-6).sqrt()
                    total += ((pred[b, i * 2 + j] - target) ** 2).mean()
                    count += 1
    loss = MAELoss()(pred, image, mask)
    assert torch.allclose(loss, total / count, atol=1e-6)
    moved = pred.clone()
    moved[mask == 0] += 5.0  # kept patches do not count
    assert torch.allclose(MAELoss()(moved, image, mask), loss, atol=1e-6)
    moved[0, 0] += 1.0  # a removed patch does
    assert not torch.allclose(MAELoss()(moved, image, mask), loss)


def test_mae_loss_without_norm_pix_is_plain_mse_on_removed_patches():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    pred = torch.zeros(2, 4, 12)
    mask = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    patch = image[0, :, 0:2, 2:4]  # patch 1 = row 0, column 1
    assert torch.allclose(MAELoss(norm_pix=False)(pred, image, mask), (patch ** 2).mean())


def test_mae_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="loss.mae"):
        MAELoss()(torch.zeros(1, 5, 48), torch.zeros(1, 3, 8, 8), torch.ones(1, 5))


@pytest.mark.parametrize("d, expected", [(0.5, 0.125), (2.0, 1.5), (-2.0, 1.5)])
def test_smooth_l1_vectors(d, expected):
    pred, target = torch.full((3, 4, 5), d), torch.zeros(3, 4, 5)
    assert abs(SmoothL1Loss()(pred, target).item() - expected) < 1e-7


def test_smooth_l1_means_over_all_elements():
    pred, target = torch.tensor([[0.5, 2.0], [0.0, 0.0]]), torch.zeros(2, 2)
    assert abs(SmoothL1Loss()(pred, target).item() - (0.125 + 1.5) / 4) < 1e-7
    assert abs(SmoothL1Loss(beta=4.0)(pred, target).item() - (0.5 * 0.25 / 4 + 0.5 * 4 / 4) / 4) < 1e-7
    with pytest.raises(ValueError, match="loss.smooth_l1"):
        SmoothL1Loss(beta=0.0)


def test_masked_token_ce_uniform_logits_is_ln_vocab():
    logits = torch.zeros(2, 5, 8192)
    ids = torch.randint(0, 8192, (2, 16))
    index = torch.randint(0, 16, (2, 5))
    loss = MaskedTokenCE()(logits, ids, index, torch.ones(2, 5))
    assert abs(loss.item() - 9.010913) < 1e-5 and abs(loss.item() - math.log(8192)) < 1e-5


def test_masked_token_ce_averages_over_valid_masked_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    ids = torch.randint(0, 7, (2, 10))
    index = torch.tensor([[4, 9, 0], [1, 2, 3]])
    valid = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss = MaskedTokenCE()(logits, ids, index, valid)
    rows = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]  # BEiT: CE over the M = 5 masked tokens, mean
    expected = F.cross_entropy(torch.stack([logits[b, n] for b, n in rows]),
                               torch.stack([ids[b, index[b, n]] for b, n in rows]))
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert logits.grad[0, 2].abs().sum() == 0  # padding gets no gradient
