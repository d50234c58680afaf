"""The batched augmentations (composer.blocks.augment_batched) against torchvision v2, sample by sample.

(a) Fixed parameters: each batched op equals its ``v2.functional`` counterpart called per sample, within the
    stated tolerance (float input: 1e-5; torchvision's uint8 path requantises after every op, so a few levels).
(b) Random parameters: the distributions of boxes, jitter factors and orders, sigmas and application rates
    match torchvision's samplers and the official recipes (fixed seeds; thresholds at ~4.5 sigma (binomial)
    or p ≈ 0.001 (KS, chi²); each test also rejects a deliberately wrong parameter, so it can fail).
(c) The blocks: ``use_batched`` reads the same v2 pipelines as the per-sample path (the papers' values), and a
    batched call is deterministic under torch's global seed.
"""
import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from composer.blocks import registry
from composer.blocks.augment_batched import incache, ops, params, views


class B:  # one namespace for the functions under test, as the prototype's tests read them
    sample_crop_boxes, sample_jitter, sample_view, RATIO = (params.sample_crop_boxes, params.sample_jitter,
                                                           params.sample_view, params.RATIO)
    resized_crop_loop, resized_crop_matmul, hflip = ops.resized_crop_loop, ops.resized_crop_matmul, ops.hflip
    adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue = (
        ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue)
    apply_grayscale, apply_solarize, apply_blur, color_jitter = (ops.apply_grayscale, ops.apply_solarize,
                                                                  ops.apply_blur, ops.color_jitter)


MODES = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def images(n=6, h=64, w=80, smooth=True, seed=0):
    """uint8 (n, 3, h, w): a blurred random field (photo-like) or white noise (worst case for aliasing)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    return TF.gaussian_blur(x, [9, 9], [3.0, 3.0]) if smooth else x


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def per_sample(fn, x, *args):
    """Stack fn(x[i], *(a[i] for a in args)) over the batch: the torchvision reference."""
    return torch.stack([fn(x[i], *(a[i].item() for a in args)) for i in range(len(x))])


def block(kind, **kw):
    b = registry.get(kind).cls(**kw)
    assert b.use_batched(True), b.batched_reason()
    return b


def specs(kind, **kw):
    """The ViewSpecs the batched path reads from a block's per-sample pipelines, in pipeline order."""
    b = block(kind, **kw)
    return [b._specs[id(p)] for p in b._pipelines()]


# ------------------------------------------------------------------------------------------ (a) fixed params
@pytest.mark.parametrize("mode", MODES)
def test_crop_loop_is_bit_exact(mode):
    x = images(8, smooth=False)
    boxes = B.sample_crop_boxes(gen(), len(x), 64, 80, (0.08, 1.0))
    ref = torch.stack([TF.resized_crop(x[i], *boxes[i].tolist(), [48, 48], interpolation=MODES[mode])
                       for i in range(len(x))])
    assert torch.equal(B.resized_crop_loop(x, boxes, 48, mode), TF.to_dtype(ref, torch.float32, scale=True))


@pytest.mark.parametrize("mode", MODES)
def test_crop_matmul_matches_float_reference(mode):
    """Same antialias weights as torch: 1e-5 vs float resized_crop; within 1 uint8 level of the uint8 path."""
    x = images(8, smooth=False)
    boxes = B.sample_crop_boxes(gen(1), len(x), 64, 80, (0.08, 1.0))
    flip = torch.tensor([True, False] * 4)
    xf = TF.to_dtype(x, torch.float32, scale=True)
    ref = torch.stack([TF.resized_crop(xf[i], *boxes[i].tolist(), [48, 48], interpolation=MODES[mode])
                       for i in range(len(x))]).clamp(0, 1)
    ref = B.hflip(ref, flip)
    out = B.resized_crop_matmul(x, boxes, 48, mode, flip=flip)
    assert (out - ref).abs().max() < 1e-5
    # vs the uint8 path: bilinear differs by its rounding (torch's fixed-point kernel); bicubic uint8 also
    # clamps+rounds between the two separable passes, which matters only at overshoots (noise: many levels).
    x = images(8, smooth=True)
    ref8 = B.hflip(B.resized_crop_loop(x, boxes, 48, mode), flip)
    assert (B.resized_crop_matmul(x, boxes, 48, mode, flip=flip) - ref8).abs().max() * 255 < 1.1


def test_flip():
    x = images(4).float()
    mask = torch.tensor([True, False, True, False])
    ref = torch.stack([TF.horizontal_flip(x[i]) if mask[i] else x[i] for i in range(4)])
    assert torch.equal(B.hflip(x.clone(), mask), ref)


JITTER = [("brightness", B.adjust_brightness, TF.adjust_brightness, (0.0, 2.0)),
          ("contrast", B.adjust_contrast, TF.adjust_contrast, (0.0, 2.0)),
          ("saturation", B.adjust_saturation, TF.adjust_saturation, (0.0, 2.0)),
          ("hue", B.adjust_hue, TF.adjust_hue, (-0.5, 0.5))]


@pytest.mark.parametrize("name,ours,theirs,rng", JITTER, ids=[j[0] for j in JITTER])
def test_colour_ops(name, ours, theirs, rng):
    """Float: equal to v2 within 1e-5. uint8 reference: within 2 levels (it truncates the result and floors
    the grey it blends with, each up to 1 level, the latter scaled by |1 − f| ≤ 1)."""
    x8 = images(8, smooth=False)
    x = TF.to_dtype(x8, torch.float32, scale=True)
    f = rng[0] + (rng[1] - rng[0]) * torch.rand(8, generator=gen(3), dtype=torch.float64)
    out = ours(x.clone(), f)
    assert (out - per_sample(theirs, x, f)).abs().max() < 1e-5
    ref8 = per_sample(theirs, x8, f).float()
    assert (out * 255 - ref8).abs().max() <= 2.0 + 1e-3


def test_grayscale_and_solarize():
    x8 = images(6, smooth=False)
    x = TF.to_dtype(x8, torch.float32, scale=True)
    mask = torch.tensor([True, False, True, True, False, True])
    ref = torch.stack([TF.rgb_to_grayscale(x[i], 3) if mask[i] else x[i] for i in range(6)])
    assert (B.apply_grayscale(x.clone(), mask) - ref).abs().max() < 1e-6  # same weights, other FMA order
    ref8 = torch.stack([TF.rgb_to_grayscale(x8[i], 3) if mask[i] else x8[i] for i in range(6)])
    assert (B.apply_grayscale(x.clone(), mask) * 255 - ref8).abs().max() < 1 + 1e-4  # uint8 truncates luma
    ref = torch.stack([TF.solarize(x8[i], 128) if mask[i] else x8[i] for i in range(6)])
    assert torch.equal((B.apply_solarize(x.clone(), mask) * 255).round().to(torch.uint8), ref)
    ref = torch.stack([TF.solarize(x[i], 0.5) if mask[i] else x[i] for i in range(6)])
    assert torch.equal(B.apply_solarize(x.clone(), mask), ref)  # 0.5 and 128/255 agree on uint8 levels


@pytest.mark.parametrize("kernel", [13, 23])
def test_blur(kernel):
    x8 = images(6, 40, 48, smooth=False)
    x = TF.to_dtype(x8, torch.float32, scale=True)
    sigma = torch.rand(6, generator=gen(4), dtype=torch.float64) * 1.9 + 0.1
    mask = torch.tensor([True, True, False, True, True, True])
    out = B.apply_blur(x.clone(), sigma, kernel, mask)
    ref = torch.stack([TF.gaussian_blur(x[i], [kernel] * 2, [sigma[i].item()] * 2) if mask[i] else x[i]
                       for i in range(6)])
    assert (out - ref).abs().max() < 1e-5
    ref8 = torch.stack([TF.gaussian_blur(x8[i], [kernel] * 2, [sigma[i].item()] * 2) for i in range(6)])
    assert ((out[mask] * 255 - ref8[mask].float()).abs().max()) <= 0.5 + 1e-3  # uint8 rounds once


def test_jitter_order_matters_and_matches():
    """One sample per order: equal to v2's ColorJitter.transform with the same fn_idx."""
    x = TF.to_dtype(images(4, smooth=False), torch.float32, scale=True)
    factors = torch.tensor([[1.3, 0.6, 1.7, 0.2]] * 4, dtype=torch.float64)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]])
    out = B.color_jitter(x.clone(), factors, order, torch.ones(4, dtype=torch.bool))
    cj = v2.ColorJitter(0.5, 0.5, 0.5, 0.5)
    for i in range(4):
        p = {"fn_idx": order[i], "brightness_factor": 1.3, "contrast_factor": 0.6, "saturation_factor": 1.7,
                 "hue_factor": 0.2}
        assert (out[i] - cj.transform(x[i], p)).abs().max() < 1e-5
    assert (out[0] - out[1]).abs().max() > 0.05


# ------------------------------------------------------------------------------------------ (b) statistics
def ks_stat(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    fa = torch.searchsorted(a, grid, right=True) / len(a)
    fb = torch.searchsorted(b, grid, right=True) / len(b)
    return (fa - fb).abs().max().item()


def ks_crit(n, m, c=1.95):  # c = 1.95: alpha ≈ 0.001
    return c * math.sqrt((n + m) / (n * m))


def torchvision_boxes(n, h, w, scale, seed=0):
    torch.manual_seed(seed)
    t = v2.RandomResizedCrop(8, scale=scale, ratio=B.RATIO)
    img = torch.empty(3, h, w)
    p = [t.make_params([img]) for _ in range(n)]
    return torch.tensor([[q["top"], q["left"], q["height"], q["width"]] for q in p])


@pytest.mark.parametrize("h,w,scale", [(256, 256, (0.08, 1.0)), (200, 320, (0.4, 1.0)), (256, 256, (0.05, 0.4))])
def test_crop_box_distribution(h, w, scale):
    n = 3000
    ref = torchvision_boxes(n, h, w, scale)
    ours = B.sample_crop_boxes(gen(7), n, h, w, scale)
    wrong = B.sample_crop_boxes(gen(7), n, h, w, (scale[0] * 1.5, scale[1]))
    feats = {"area": lambda b: b[:, 2] * b[:, 3] / (h * w), "ratio": lambda b: b[:, 3] / b[:, 2],
             "top": lambda b: b[:, 0] / h, "left": lambda b: b[:, 1] / w}
    for name, f in feats.items():
        assert ks_stat(f(ours), f(ref)) < ks_crit(n, n), name
    assert ks_stat(feats["area"](wrong), feats["area"](ref)) > ks_crit(n, n)
    assert ((ours[:, :2] >= 0) & (ours[:, 0] + ours[:, 2] <= h)[:, None] & (ours[:, 1] + ours[:, 3] <= w)[:, None]).all()


def test_crop_fallback_is_central_with_clamped_ratio():
    """A 100×1000 image with scale (0.9, 1) never fits: every box is torchvision's fallback."""
    ours = B.sample_crop_boxes(gen(8), 50, 100, 1000, (0.9, 1.0))
    ref = torchvision_boxes(50, 100, 1000, (0.9, 1.0))
    assert torch.equal(ours, ref) and ours[0].tolist() == [0, 433, 100, 133]
    tall = B.sample_crop_boxes(gen(8), 5, 1000, 100, (0.9, 1.0))
    assert torch.equal(tall, torchvision_boxes(5, 1000, 100, (0.9, 1.0)))


def test_jitter_factor_ranges_uniform():
    n = 5000
    f, _ = B.sample_jitter(gen(9), n, ((0.2, 1.8), (0.2, 1.8), (0.6, 1.4), (-0.2, 0.2)))
    for col, (lo, hi) in enumerate([(0.2, 1.8), (0.2, 1.8), (0.6, 1.4), (-0.2, 0.2)]):
        u = (f[:, col] - lo) / (hi - lo)
        assert 0 <= u.min() < 0.01 and 0.99 < u.max() <= 1
        assert ks_stat(u, torch.rand(n, generator=gen(10), dtype=torch.float64)) < ks_crit(n, n)
    f, _ = B.sample_jitter(gen(9), n, ((0.0, 2.5), None, None, None))  # ColorJitter(1.5): U[0, 2.5]
    assert f[:, 0].min() >= 0 and f[:, 0].max() > 2.45 and (f[:, 1:3] == 1).all() and (f[:, 3] == 0).all()


def test_jitter_order_uniform_over_24_permutations():
    n = 24000
    _, order = B.sample_jitter(gen(11), n, ((0.6, 1.4),) * 3 + ((-0.1, 0.1),))
    assert (order.sort(1).values == torch.arange(4)).all()
    code = order[:, 0] * 64 + order[:, 1] * 16 + order[:, 2] * 4 + order[:, 3]
    counts = torch.unique(code, return_counts=True)[1].double()
    assert len(counts) == 24
    chi2 = ((counts - n / 24) ** 2 / (n / 24)).sum().item()
    assert chi2 < 49.7  # chi²(23) at p = 0.001


def rate_ok(x, p, n):
    return abs(x.double().mean().item() - p) <= 4.5 * math.sqrt(max(p * (1 - p), 1e-12) / n)


def test_application_rates_and_sigma_range():
    n = 20000
    # the official rates (flip, jitter, gray, blur, solarize), written out here as an independent reference:
    # DINO global crop 2 and local crops (main_dino.py), MoCo v2 (main_moco.py --aug-plus)
    _, dino_g2, dino_local = specs("augment.dino", local_crops=1)
    official = [(dino_g2, (0.5, 0.8, 0.2, 0.1, 0.2)), (specs("augment.moco_v2")[0], (0.5, 0.8, 0.2, 0.5, 0.0)),
                (dino_local, (0.5, 0.8, 0.2, 0.5, 0.0))]
    for spec, rates in official:
        prm = B.sample_view(gen(12), spec, n, 256, 256)
        for mask, p in zip((prm.flip, prm.jitter_on, prm.gray, prm.blur_on, prm.solarize), rates):
            assert rate_ok(mask, p, n), (spec, p, mask.double().mean())
            assert not rate_ok(mask, min(p + 0.02, 1.0), n) or p >= 0.98 or p == 0.0
        s = prm.sigma
        assert 0.1 <= s.min() < 0.11 and 1.99 < s.max() <= 2.0
        assert ks_stat((s - 0.1) / 1.9, torch.rand(n, generator=gen(13), dtype=torch.float64)) < ks_crit(n, n)


def test_masks_are_independent_across_views_and_ops():
    prm = B.sample_view(gen(14), specs("augment.moco_v2")[0], 20000, 256, 256)
    both = prm.flip & prm.gray
    assert rate_ok(both, 0.5 * 0.2, 20000)


# ------------------------------------------------------------------------------------------ (c) blocks
def reference_view(x8, spec, p, uint8_crop):
    """One view by torchvision's functionals per sample, float32 after the crop (the uint8 crop, as the "loop"
    crop does, or the float crop, as "matmul" does): the batched path's reference."""
    out = []
    for i in range(len(x8)):
        t, l, h, w = p.boxes[i].tolist()
        src = x8[i] if uint8_crop else x8[i].float() / 255
        y = TF.resized_crop(src, t, l, h, w, [spec.size] * 2, interpolation=MODES[spec.interpolation])
        y = (y.float() / 255 if uint8_crop else y).clamp(0, 1)
        if p.flip[i]:
            y = TF.horizontal_flip(y)
        if p.jitter_on[i]:
            fs = p.jitter_factors[i].tolist()
            fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            ident = (1.0, 1.0, 1.0, 0.0)
            for op in p.jitter_order[i].tolist():
                if fs[op] != ident[op]:
                    y = fns[op](y, fs[op])
        if p.gray[i]:
            y = TF.rgb_to_grayscale(y, 3)
        if p.blur_on[i] and spec.blur_kernel > 1:
            y = TF.gaussian_blur(y, [spec.blur_kernel] * 2, [p.sigma[i].item()] * 2)
        if p.solarize[i]:
            y = TF.solarize(y, 0.5)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["augment.moco_v3", "augment.simclr"])
def test_apply_view_equals_functional_pipeline(kind):
    """A whole view (crop, flip, jitter in per-sample order, gray, blur, solarize) for drawn parameters."""
    x8 = images(8, 64, 80, smooth=False)
    for spec in specs(kind, size=48):
        p = B.sample_view(gen(21), spec, 8, 64, 80)
        for crop in ("loop", "matmul"):
            ref = reference_view(x8, spec, p, uint8_crop=crop == "loop")
            assert (views.apply_view(x8, spec, p, crop) - ref).abs().max() < 1e-4, crop


def test_blocks_read_the_papers_values():
    """The batched path takes its parameters from the per-sample pipelines; these are the official numbers."""
    simclr, = specs("augment.simclr")
    assert (simclr.blur_kernel, simclr.interpolation, simclr.scale) == (23, "bicubic", (0.08, 1.0))
    assert simclr.jitter[3] == (-0.2, 0.2)
    assert [round(v, 6) for v in simclr.jitter[0]] == [0.2, 1.8] and (simclr.jitter_p, simclr.gray_p) == (0.8, 0.2)
    moco, = specs("augment.moco_v2")
    assert (moco.blur_kernel, moco.blur_p, moco.flip_p, moco.scale) == (13, 0.5, 0.5, (0.2, 1.0))
    assert moco.jitter == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
    v3a, v3b = specs("augment.moco_v3")
    assert (v3a.blur_p, v3a.solarize_p, v3b.blur_p, v3b.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    g1, g2, loc = specs("augment.dino", local_crops=10)
    assert (loc.size, loc.scale, loc.blur_p, loc.blur_kernel) == (96, (0.05, 0.4), 0.5, 13)
    assert g1.interpolation == "bicubic" and g2.solarize_p == 0.2 and g1.scale == (0.4, 1.0)
    assert specs("augment.clip")[0].flip_p == 0.0 and specs("augment.mae")[0].flip_p == 0.5
    v1 = registry.get("augment.moco_v1").cls()  # grayscale before the jitter: does not commute, stays per sample
    assert not v1.use_batched(True) and "commute" in v1.batched_reason()
    assert not registry.get("augment.beit").cls().use_batched(True)


def test_spec_of_refuses_what_it_cannot_reproduce():
    crop = v2.RandomResizedCrop(32)
    with pytest.raises(ValueError, match="ColorJitter after"):
        views.spec_of(v2.Compose([crop, v2.GaussianBlur(5), v2.ColorJitter(0.4)]))
    with pytest.raises(ValueError, match="RandomRotation"):
        views.spec_of(v2.Compose([crop, v2.RandomRotation(10)]))
    spec = views.spec_of(v2.Compose([crop, v2.RandomApply([v2.RandomGrayscale(0.5)], p=0.5)]))
    assert spec.gray_p == 0.25


@pytest.mark.parametrize("kind,kw", [("augment.dino", {"global_size": 32, "local_size": 16, "local_crops": 3}),
                                     ("augment.moco_v2", {"size": 32, "views": 2})])
def test_block_batched_shapes_determinism_and_chunks(kind, kw):
    x = images(5, 72, 64)
    b = block(kind, **kw)
    torch.manual_seed(3)
    first = b(x)
    torch.manual_seed(3)
    again = b(list(x.unbind(0)))  # a list of same-size images gives the same batch
    per = registry.get(kind).cls(**kw)(x)  # the per-sample path: same shapes
    first, again, per = [t if isinstance(t, tuple) else (t,) for t in (first, again, per)]
    assert [t.shape for t in first] == [t.shape for t in per]
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    # the chunk size never changes a draw or a value (parameters are drawn for the whole batch first)
    spec = specs(kind, **kw)[0]
    whole = views.run_views(x, [spec], gen(4), (0.5,) * 3, (0.25,) * 3, chunk=5)
    parts = views.run_views(x, [spec], gen(4), (0.5,) * 3, (0.25,) * 3, chunk=2)
    assert torch.equal(whole, parts)


def test_block_batched_padded_sizes():
    """Images of different sizes: padded into one batch, boxes drawn inside each image's own size."""
    b = block("augment.moco_v2", size=16)
    x = [images(1, 40, 30)[0], images(1, 20, 50, seed=1)[0]]
    padded = b._samples(x)
    assert padded.images.shape == (2, 3, 40, 50) and padded.heights.tolist() == [40, 20]
    boxes = B.sample_crop_boxes(gen(0), 500, padded.heights.repeat(250), padded.widths.repeat(250), (0.2, 1.0))
    assert (boxes[:, 0] + boxes[:, 2] <= padded.heights.repeat(250)).all()
    assert (boxes[:, 1] + boxes[:, 3] <= padded.widths.repeat(250)).all()
    assert b(x).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("kind,kw", [("augment.dino", {"global_size": 40, "local_size": 24, "local_crops": 2}),
                                     ("augment.simclr", {"size": 40})])
def test_incache_cpu_path_equals_the_batched_kernels(kind, kw):
    """The default CPU path (one image at a time, in place) against the batched kernels, same parameters."""
    x = images(6, 64, 80, smooth=False)
    for spec in specs(kind, **kw):
        a = views.run_views(x, [spec], gen(30), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), crop="incache")
        b = views.run_views(x, [spec], gen(30), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), crop="loop", chunk=4)
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("side", [40, 136])  # ≤ MATMUL_BLUR_MAX: two matmuls; above: shifted multiply-adds
def test_incache_ops_equal_torchvision(side):
    """The CPU path's own formulas, image by image, against v2.functional on float input: the branch-free hue
    (grey pixels and channel ties included), the contrast mean from channel means, the blur (matmul, or shifted
    adds without the taps below 2^-24), and solarize as min(x, 1 − x), which is exact."""
    x8 = images(4, side, side, smooth=False)
    x8[0, :, :8] = x8[0, :1, :8]  # grey rows: d = 0
    x8[1, 1] = x8[1, 0]  # r = g everywhere: ties for the maximum
    x8[2, 2, :, :side // 2] = x8[2, 0, :, :side // 2]  # r = b on half of the image
    x = TF.to_dtype(x8, torch.float32, scale=True)
    f = torch.rand(4, generator=gen(5), dtype=torch.float64) - 0.5
    sigma = torch.tensor([0.1, 0.45, 1.2, 2.0], dtype=torch.float64)
    for kernel in (13, 23):
        k1 = ops.gaussian_kernels(sigma, kernel)
        mats = incache.blur_matrices(k1, side) if side <= incache.MATMUL_BLUR_MAX else [None] * 4
        for i in range(4):
            blurred = incache.blur(x[i].clone(), k1[i], mats[i])
            assert (blurred - TF.gaussian_blur(x[i], [kernel] * 2, [sigma[i].item()] * 2)).abs().max() < 1e-5
    for i in range(4):
        assert (incache.hue(x[i].clone(), f[i].item()) - TF.adjust_hue(x[i], f[i].item())).abs().max() < 1e-5
        ref8 = TF.adjust_hue(x8[i], f[i].item()).float()
        assert (incache.hue(x[i].clone(), f[i].item()) * 255 - ref8).abs().max() <= 2.0 + 1e-3
        contrast = incache.jitter(x[i].clone(), [1.0, 1.7, 1.0, 0.0], [1, 0, 2, 3])
        assert (contrast - TF.adjust_contrast(x[i], 1.7)).abs().max() < 1e-5
    out = torch.empty(4, 3, side, side)
    none = torch.zeros(4, dtype=torch.bool)
    p = params.ViewParams(boxes=torch.tensor([[0, 0, side, side]] * 4), flip=none, jitter_on=none,
                          jitter_factors=torch.zeros(4, 4, dtype=torch.float64),
                          jitter_order=torch.arange(4).repeat(4, 1), gray=none, blur_on=none, sigma=sigma,
                          solarize=torch.ones(4, dtype=torch.bool))
    incache.apply_view_into(out, x8, side, "bilinear", 1, p, (0.0,) * 3, (1.0,) * 3)
    assert torch.equal((out * 255).round().to(torch.uint8), TF.solarize(x8, 128))
    assert torch.equal(out, torch.stack([TF.solarize(x[i], 0.5) for i in range(4)]))
