"""Maskers (MAE random, BEiT block-wise, I-JEPA multi-block) against"""
import random
import statistics

import pytest
import torch

from composer.blocks import masking
from composer.blocks.masking import (
    BlockwiseMasking,
    GatherTargets,
    MultiBlockMasking,
    MultiBlockMaskingFixed,
    RandomMasking,
    beit_block_mask,
    block_size,
    random_masking,
)
from composer.blocks.registry import get


def test_maskers_are_data_stage_with_named_outputs():
    assert get("mask.random").stage == "data" and get("mask.random").outputs == ("keep", "restore", "mask")
    assert get("mask.block").stage == "data" and get("mask.block").outputs == ("mask", "index", "valid")
    for kind in ("mask.multi_block", "mask.multi_block_fixed"):
        assert get(kind).stage == "data" and get(kind).outputs == ("context", "targets")
    assert get("ops.gather_targets").stage == "model"


# ---------------------------------------------------------------------------------------------- MAE


def test_random_masking_vector():
    out = random_masking(torch.tensor([[0.5, 0.1, 0.9, 0.3]]), 0.5)
    assert out.keep.tolist() == [[1, 3]]
    assert out.restore.tolist() == [[2, 0, 3, 1]]
    assert out.mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_random_masking_block_counts_and_consistency():
    torch.manual_seed(0)
    out = RandomMasking(ratio=0.75, patch_size=8)(torch.zeros(5, 3, 32, 48))  # 4x6 grid, L=24
    length, len_keep = 24, int(24 * 0.25)
    assert out.keep.shape == (5, len_keep) and out.keep.dtype == torch.long
    assert out.restore.shape == out.mask.shape == (5, length)
    assert out.mask.sum(1).tolist() == [length - len_keep] * 5  # exact count per sample
    assert (out.mask.gather(1, out.keep) == 0).all()  # kept patches are the unmasked ones
    # restore inverts the shuffle: [kept, removed] in shuffle order back to image order is the identity
    shuffle = torch.argsort(out.restore, dim=1)
    assert torch.equal(shuffle[:, :len_keep], out.keep)
    assert torch.equal(torch.gather(shuffle, 1, out.restore), torch.arange(length).expand(5, -1))
    assert len({tuple(k) for k in out.keep.tolist()}) > 1  # samples are masked independently


@pytest.mark.parametrize("kw", [{"ratio": 1.0}, {"ratio": -0.1}, {"patch_size": 0}])
def test_random_masking_rejects_bad_params(kw):
    with pytest.raises(ValueError, match="mask.random"):
        RandomMasking(**kw)


# --------------------------------------------------------------------------------------------- BEiT


def test_beit_block_mask_statistics_on_14x14():
    rng = random.Random(0)
    counts = []
    for _ in range(2000):
        mask, boxes = beit_block_mask(14, 14, 75, 16, 75, 0.3, 1 / 0.3, rng)
        count = int(mask.sum())
        counts.append(count)
        assert count <= 75
        assert sum(b.new for b in boxes) == count
        union = torch.zeros(14, 14, dtype=torch.long)
        for b in boxes:
            assert b.new >= 1 and b.height < 14 and b.width < 14
            assert 0 <= b.top <= 14 - b.height and 0 <= b.left <= 14 - b.width
            covered = union[b.top:b.top + b.height, b.left:b.left + b.width]
            assert b.height * b.width - int(covered.sum()) == b.new  # each block adds exactly `new` patches
            covered.fill_(1)
        assert torch.equal(union, mask)
    # 5000 draws of the official generator gave mean 74.49, min 65, exactly 75 in 68 %
    assert abs(statistics.mean(counts) - 74.49) < 0.25
    assert min(counts) >= 55
    assert abs(sum(c == 75 for c in counts) / len(counts) - 0.68) < 0.05


def test_block_masking_outputs_pad_masked_indices():
    random.seed(1)
    out = BlockwiseMasking(patch_size=16, num_masking_patches=75)(torch.zeros(6, 3, 224, 224))
    assert out.mask.shape == (6, 196) and out.index.shape == out.valid.shape == (6, 75)
    for b in range(6):
        masked = torch.nonzero(out.mask[b]).flatten()
        n = len(masked)
        assert out.valid[b].sum() == n and (out.valid[b, :n] == 1).all() and (out.valid[b, n:] == 0).all()
        assert torch.equal(out.index[b, :n], masked) and (out.index[b, n:] == 0).all()


def test_block_masking_seeded_python_random_reproduces():
    random.seed(3)
    a = BlockwiseMasking(patch_size=8, num_masking_patches=6, min_num_patches=2)(torch.zeros(2, 3, 32, 32))
    random.seed(3)
    b = BlockwiseMasking(patch_size=8, num_masking_patches=6, min_num_patches=2)(torch.zeros(2, 3, 32, 32))
    assert torch.equal(a.mask, b.mask) and a.mask.sum(1).max() <= 6


@pytest.mark.parametrize("kw", [{"num_masking_patches": 0}, {"min_aspect": 0.0}, {"min_aspect": 2.0,
                                                                                   "max_aspect": 1.0}])
def test_block_masking_rejects_bad_params(kw):
    with pytest.raises(ValueError, match="mask.block"):
        BlockwiseMasking(**kw)


def test_block_masking_rejects_too_many_patches_for_grid():
    with pytest.raises(ValueError, match="exceeds"):
        BlockwiseMasking(patch_size=8, num_masking_patches=20)(torch.zeros(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------- I-JEPA


@pytest.mark.parametrize("grid, expected", [(16, [(5, 7), (7, 6), (9, 6)]), (14, [(5, 6), (6, 5), (8, 5)])])
def test_multi_block_target_sizes_with_fixed_rand(monkeypatch, grid, expected):
    masker = MultiBlockMasking()
    for r, size in zip([0.0, 0.5, 1.0], expected):
        assert block_size(grid, grid, (0.15, 0.2), (0.75, 1.5), r, r, grid - 1, grid - 1) == size
        monkeypatch.setattr(masking.torch, "rand", lambda *a, r=r, **k: torch.tensor([r]))
        target, context = masker.sizes(grid, grid)  # the block's own draw: one _rand for scale and aspect
        assert target == size and context == (grid - 1, grid - 1)
        monkeypatch.undo()


def test_fixed_variant_draws_scale_and_aspect_independently(monkeypatch):
    draws = iter([0.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(masking.torch, "rand", lambda *a, **k: torch.tensor([next(draws)]))
    target, context = MultiBlockMaskingFixed().sizes(16, 16)
    assert target == (8, 5)  # scale 0.15 (38 patches) with aspect 1.5; the quirk would give 5x7
    assert context == (16, 16)  # no cap at grid-1


def _rows_cols(idx, grid):
    return idx // grid, idx % grid


@pytest.mark.parametrize("grid", [16, 14])
def test_multi_block_official_quirks(grid):
    torch.manual_seed(0)
    masker = MultiBlockMasking(patch_size=1)
    image = torch.zeros(8, 3, grid, grid)
    for _ in range(10):
        out = masker(image)
        assert out.context.dim() == 2 and out.context.shape[0] == 8  # equal lengths across the batch
        assert out.targets.shape[:2] == (4, 8)
        for b in range(8):
            ctx = set(out.context[b].tolist())
            tgt = set(out.targets[:, b].flatten().tolist())
            assert not ctx & tgt  # overlap removed
            r, c = _rows_cols(out.context[b], grid)
            assert r.max() <= grid - 2 and c.max() <= grid - 2  # inside the top-left (grid-1)^2 block
            r, c = _rows_cols(out.targets[:, b], grid)
            assert r.max() <= grid - 2 and c.max() <= grid - 2  # targets never touch the last row/column
            assert torch.equal(out.context[b], out.context[b].sort().values)
    # without overlap removal the context is exactly the top-left (grid-1)x(grid-1) square
    out = MultiBlockMasking(patch_size=1, allow_overlap=True)(image)
    square = torch.tensor([r * grid + c for r in range(grid - 1) for c in range(grid - 1)])
    assert all(torch.equal(out.context[b], square) for b in range(8))


def test_multi_block_targets_are_full_rectangles(monkeypatch):
    monkeypatch.setattr(masking.torch, "rand", lambda *a, **k: torch.tensor([0.5]))  # 7x6 on 16x16
    torch.manual_seed(1)
    out = MultiBlockMasking(patch_size=1)(torch.zeros(3, 3, 16, 16))
    assert out.targets.shape == (4, 3, 42)
    for block in out.targets.reshape(12, 42):
        r, c = _rows_cols(block, 16)
        assert r.max() - r.min() + 1 == 7 and c.max() - c.min() + 1 == 6


def test_multi_block_truncates_context_to_batch_minimum():
    torch.manual_seed(2)
    masker = MultiBlockMasking(patch_size=1)
    sizes = masker.sizes(16, 16)
    torch.manual_seed(3)
    out = masker.sample(6, 16, 16, *sizes)
    torch.manual_seed(3)  # the same draws, recomputed per image without truncation
    full = []
    for _ in range(6):
        blocks = [masker._block(16, 16, sizes[0], None) for _ in range(4)]
        full.append(masker._block(16, 16, sizes[1], [c for _, c in blocks])[0])
    ke = min(len(f) for f in full)
    assert out.context.shape == (6, ke)
    assert all(torch.equal(out.context[b], full[b][:ke]) for b in range(6))  # the first indices are kept


def test_multi_block_drops_the_last_constraint_first():
    masker = MultiBlockMasking(patch_size=1, min_keep=10)
    top_rows_banned = torch.ones(16, 16, dtype=torch.int32)
    top_rows_banned[:5] = 0
    nothing = torch.zeros(16, 16, dtype=torch.int32)
    everything = torch.ones(16, 16, dtype=torch.int32)
    idx, _ = masker._block(16, 16, (15, 15), [top_rows_banned, everything, everything, nothing])
    r, c = _rows_cols(idx, 16)  # after 20 failures the 4th region is dropped, the 1st still applies
    assert len(idx) == 10 * 15 and r.min() == 5 and r.max() == 14 and c.max() == 14


def test_fixed_variant_reaches_last_row_and_moves_context():
    torch.manual_seed(0)
    masker = MultiBlockMaskingFixed(patch_size=1)
    last_target = last_context = False
    for _ in range(10):
        out = masker(torch.zeros(8, 3, 16, 16))
        assert not set(out.context[0].tolist()) & set(out.targets[:, 0].flatten().tolist())
        r, c = _rows_cols(out.targets, 16)
        last_target |= bool((r == 15).any() or (c == 15).any())
        r, c = _rows_cols(out.context, 16)
        last_context |= bool((r == 15).any() or (c == 15).any())
    assert last_target and last_context


def test_multi_block_rejects_blocks_that_cannot_exceed_min_keep():
    with pytest.raises(ValueError, match="min_keep"):
        MultiBlockMasking(patch_size=8)(torch.zeros(2, 3, 32, 32))  # 4x4 grid: 1x1 targets vs min_keep 10
    out = MultiBlockMasking(patch_size=8, min_keep=0, npred=2)(torch.zeros(2, 3, 32, 32))
    assert out.targets.shape[:2] == (2, 2)


@pytest.mark.parametrize("kw", [{"pred_scale": (0.3, 0.2)}, {"enc_scale": (0.0, 1.0)}, {"npred": 0},
                                {"aspect_ratio": (2.0, 1.0)}])
def test_multi_block_rejects_bad_params(kw):
    with pytest.raises(ValueError, match="mask.multi_block"):
        MultiBlockMasking(**kw)


def test_gather_targets_is_mask_major():
    tokens = torch.randn(3, 10, 4)
    targets = torch.randint(0, 10, (2, 3, 5))
    out = GatherTargets()(tokens, targets)
    assert out.shape == (6, 5, 4)
    for m in range(2):
        for b in range(3):
            assert torch.equal(out[m * 3 + b], tokens[b, targets[m, b]])
