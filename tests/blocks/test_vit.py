"""ViT parts: kept-token encoder, MAE decoder, I-JEPA predictor, BEiT model and token ops."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from composer.blocks.losses.mae import MAELoss
from composer.blocks.masking import random_masking
from composer.blocks.registry import get
from composer.blocks.vit import (
    BEiTEncoder,
    BEiTLMHead,
    IJEPAPredictor,
    MAEDecoder,
    TokenLayerNorm,
    ViTEncoder,
    patchify,
    sincos_pos_embed_2d,
)

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)  # 4x4 grid, L = 16


def test_sincos_table_matches_mae_formula():
    dim, gh, gw = 16, 3, 5
    table = sincos_pos_embed_2d(dim, gh, gw)
    assert table.shape == (gh * gw, dim)
    for r in range(gh):
        for c in range(gw):
            expected = []
            for coord in (c, r):  # MAE: meshgrid(grid_w, grid_h) → the first half encodes the column
                angles = [coord / 10000 ** (i / (dim / 4)) for i in range(dim // 4)]
                expected += [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
            assert torch.allclose(table[r * gw + c], torch.tensor(expected), atol=1e-6)


def test_patchify_order_is_h_w_p_q_c():
    image = torch.randn(2, 3, 8, 12)
    out = patchify(image, 4)
    assert out.shape == (2, 6, 48)
    for i, j, p, q, c in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 2), (0, 1, 2, 3, 1)]:
        assert out[1, i * 3 + j, (p * 4 + q) * 3 + c] == image[1, c, i * 4 + p, j * 4 + q]


@pytest.mark.parametrize("cls_token", [True, False])
def test_encoder_with_keep_equals_gathered_full_encoder_at_depth_zero(cls_token):
    torch.manual_seed(0)
    enc = ViTEncoder(**{**TINY, "depth": 0}, cls_token=cls_token).eval()
    image = torch.randn(3, 3, 32, 32)
    keep = random_masking(torch.rand(3, 16), 0.75).keep  # (3, 4)
    full, part = enc(image).tokens, enc(image, keep).tokens
    c = int(cls_token)
    assert part.shape == (3, c + 4, 32)
    expected = torch.gather(full[:, c:], 1, keep.unsqueeze(-1).expand(-1, -1, 32))
    assert torch.allclose(part[:, c:], expected, atol=1e-6)
    if cls_token:
        assert torch.allclose(part[:, 0], full[:, 0], atol=1e-6)


def test_encoder_is_permutation_equivariant_in_keep_order():
    torch.manual_seed(0)
    enc = ViTEncoder(**TINY, cls_token=True).eval()
    image = torch.randn(2, 3, 32, 32)
    perm = torch.stack([torch.randperm(16) for _ in range(2)])
    full, permuted = enc(image), enc(image, perm)
    expected = torch.gather(full.tokens[:, 1:], 1, perm.unsqueeze(-1).expand(-1, -1, 32))
    assert torch.allclose(permuted.tokens[:, 1:], expected, atol=1e-5)
    assert torch.allclose(permuted.pooled, full.pooled, atol=1e-5)


def test_encoder_pooled_view_axis_and_other_sizes():
    torch.manual_seed(0)
    enc = ViTEncoder(**TINY, cls_token=False).eval()
    views = torch.randn(2, 3, 3, 32, 32)
    out = enc(views)
    assert out.tokens.shape == (2, 3, 16, 32) and out.pooled.shape == (2, 3, 32)
    one = enc(views[1])
    assert torch.allclose(out.tokens[1], one.tokens, atol=1e-6)
    assert torch.allclose(one.pooled, one.tokens.mean(1), atol=1e-6)  # no cls: mean of patch tokens
    assert enc(torch.randn(2, 3, 48, 40)).tokens.shape == (2, 30, 32)  # any grid: sin-cos on the fly
    with_cls = ViTEncoder(**TINY).eval()(views[0])
    assert torch.equal(with_cls.pooled, with_cls.tokens[:, 0])


def test_encoder_cost_follows_keep_ratio():
    """FLOPs at mask ratio 0.75 are within 5 % of a quarter of the unmasked cost (ViT-B/16, 224 px, meta)."""
    with torch.device("meta"):
        enc = ViTEncoder(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
        image = torch.empty(2, 3, 224, 224)
        keep = torch.empty(2, 49, dtype=torch.long)  # int(196 · 0.25)

    def flops(**kw):
        with FlopCounterMode(display=False) as counter:
            enc(image, **kw)
        return counter.get_total_flops()

    full, masked = flops(), flops(keep=keep)
    assert full > 6e10  # ≈ 2 · 2 · 86M params · 197 tokens: the blocks are really counted
    assert abs(masked / (full / 4) - 1) < 0.05


def test_mae_decoder_unshuffles_into_image_order():
    torch.manual_seed(0)
    dec = MAEDecoder(in_dim=32, embed_dim=16, depth=0, num_heads=2, img_size=32, patch_size=8).eval()
    masks = random_masking(torch.rand(2, 16), 0.75)
    tokens = torch.randn(2, 5, 32)  # cls + 4 kept
    out = dec(tokens, masks.restore)
    assert out.shape == (2, 16, 8 * 8 * 3)
    pos = sincos_pos_embed_2d(16, 4, 4)
    for b in range(2):
        for l in range(16):
            where = (masks.keep[b] == l).nonzero()
            x = dec.decoder_embed(tokens[b, 1 + where[0, 0]]) if len(where) else dec.mask_token[0, 0]
            assert torch.allclose(out[b, l], dec.pred(dec.norm(x + pos[l])), atol=1e-5)


def test_mae_encoder_decoder_loss_gradients_flow():
    torch.manual_seed(0)
    enc = ViTEncoder(**TINY)
    dec = MAEDecoder(in_dim=32, embed_dim=16, depth=1, num_heads=2, img_size=32, patch_size=8)
    image = torch.randn(2, 3, 32, 32)
    masks = random_masking(torch.rand(2, 16), 0.75)
    pred = dec(enc(image, masks.keep).tokens, masks.restore)
    MAELoss()(pred, image, masks.mask).backward()
    for name, p in [*dec.named_parameters(), *enc.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ijepa_predictor_shapes_order_and_gradients():
    torch.manual_seed(0)
    pred = IJEPAPredictor(in_dim=32, embed_dim=16, depth=0, num_heads=2, img_size=32, patch_size=8).eval()
    tokens, context = torch.randn(3, 6, 32), torch.stack([torch.randperm(16)[:6] for _ in range(3)])
    targets = torch.randint(0, 16, (4, 3, 5))
    out = pred(tokens, context, targets)
    assert out.shape == (12, 5, 32)
    pos = sincos_pos_embed_2d(16, 4, 4)
    # depth 0: each query is its own mask token + position, so row m·B+b reads target block m of sample b
    for m in range(4):
        for b in range(3):
            expected = pred.proj(pred.norm(pred.mask_token[0] + pos[targets[m, b]]))
            assert torch.allclose(out[m * 3 + b], expected, atol=1e-5)

    deep = IJEPAPredictor(in_dim=32, embed_dim=16, depth=2, num_heads=2, img_size=32, patch_size=8).eval()
    tokens.requires_grad_(True)
    out = deep(tokens, context, targets)
    changed = tokens.detach().clone()
    changed[1] += 1.0
    out2 = deep(changed, context, targets)
    rows_b1 = torch.arange(4) * 3 + 1
    others = torch.tensor([r for r in range(12) if r not in rows_b1.tolist()])
    assert torch.allclose(out[others], out2[others], atol=1e-6)  # sample 1's context reaches only its rows
    assert not torch.allclose(out[rows_b1], out2[rows_b1])
    out.pow(2).mean().backward()
    assert tokens.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deep.parameters())


def test_beit_encoder_masks_tokens_and_lm_head_gathers():
    torch.manual_seed(0)
    enc = BEiTEncoder(**{**TINY, "depth": 0}).eval()
    image = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16)
    mask[0, [1, 5]] = 1
    out = enc(image, mask)
    assert out.tokens.shape == (2, 17, 32) and out.pooled.shape == (2, 32)
    plain = enc(image).tokens
    assert torch.allclose(out.tokens[0, 2], enc.norm(enc.mask_token[0, 0]), atol=1e-6)
    assert torch.allclose(out.tokens[0, 1], plain[0, 1], atol=1e-6) and torch.allclose(out.tokens[1], plain[1])

    deep = BEiTEncoder(**TINY, drop_path=0.0)
    head = BEiTLMHead(in_dim=32, vocab_size=10)
    index = torch.tensor([[1, 5, 0], [2, 3, 7]])
    logits = head(deep(image, mask).tokens, index)
    assert logits.shape == (2, 3, 10)
    assert torch.allclose(logits[1, 2], head.lm_head(deep(image, mask).tokens[1, 1 + 7]), atol=1e-5)
    logits.sum().backward()
    assert deep.mask_token.grad.abs().sum() > 0 and deep.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_token_layer_norm_has_no_affine():
    x = torch.randn(2, 5, 8) * 3 + 1
    assert torch.allclose(TokenLayerNorm()(x), F.layer_norm(x, (8,)))
    assert list(TokenLayerNorm().parameters()) == []


@pytest.mark.parametrize("kind, kw", [("encoder.vit", {"img_size": 30, "patch_size": 8}),
                                      ("encoder.vit", {"embed_dim": 30, "num_heads": 3}),
                                      ("encoder.vit", {"drop_path": 1.0}),
                                      ("head.mae_decoder", {"embed_dim": 20, "num_heads": 3}),
                                      ("head.ijepa_predictor", {"in_dim": 0}),
                                      ("encoder.beit", {"layer_scale": -1.0}),
                                      ("head.beit_lm", {"vocab_size": 1}),
                                      ("ops.layer_norm", {"eps": 0.0})])
def test_bad_params_raise_naming_the_block(kind, kw):
    with pytest.raises(ValueError, match=kind):
        get(kind).cls(**kw)
