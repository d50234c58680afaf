"""Augment blocks: shapes, per-sample randomness, determinism, view asymmetry, normalisation, errors.

References are independent of the implementation: hand-computed normalised values, the solarization rates of
the official recipes (MoCo v3 main_moco.py, DINO DataAugmentationDINO), Pillow's own GaussianBlur, and the
kernel sizes SimCLR's data_util.py gives.
"""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as F

from composer.blocks import registry
from composer.blocks.augment import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    pil_blur_kernel,
    simclr_blur_kernel,
)

KINDS = ["simclr", "moco_v1", "moco_v2", "moco_v3", "dino", "mae", "ijepa", "beit", "clip", "resize"]
RANDOM_KINDS = [k for k in KINDS if k != "resize"]
pytestmark = pytest.mark.usefixtures("one_thread")  # as in DataLoader workers (tests/conftest.py)


def make(kind, **kw):
    """A block with tiny sizes (16 px, DINO locals 8 px, BEiT tokenizer 8 px) unless overridden."""
    defaults = {"dino": {"global_size": 16, "local_size": 8, "local_crops": 3},
                "beit": {"size": 16, "tokenizer_size": 8}}.get(kind, {"size": 16})
    return registry.get(f"augment.{kind}").cls(**{**defaults, **kw})


def expected_shapes(kind, b):
    """Output shapes of ``make(kind)`` for a batch of b images."""
    return {"simclr": [(2, b, 3, 16, 16)], "moco_v3": [(2, b, 3, 16, 16)],
            "dino": [(2, b, 3, 16, 16), (3, b, 3, 8, 8)], "beit": [(b, 3, 16, 16), (b, 3, 8, 8)]
            }.get(kind, [(b, 3, 16, 16)])


def as_list(out):
    return list(out) if isinstance(out, tuple) else [out]


def random_batch(b=4, h=40, w=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def denormalise(x, mean, std):
    """Undo Normalize on a (..., 3, H, W) tensor: values back in [0, 1]."""
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


# ----- registry contract -----

@pytest.mark.parametrize("kind", KINDS)
def test_registered_as_documented_data_block(kind):
    info = registry.get(f"augment.{kind}")
    assert info.stage == "data"
    assert list(info.inputs) == ["image"] and info.inputs["image"].doc
    undocumented = [name for name, p in info.params.items() if not p.doc]
    assert not undocumented, f"augment.{kind}: parameters without docs {undocumented}"
    assert info.outputs == {"dino": ("global_crops", "local_crops"), "beit": ("image", "tokenizer_image")}.get(kind)


# ----- shapes and dtypes -----

@pytest.mark.parametrize("kind", KINDS)
def test_shapes_for_tensor_and_list_batches(kind):
    block = make(kind)
    torch.manual_seed(0)
    tensor_batch = random_batch(b=3)
    list_batch = [random_batch(b=1, h=h, w=w, seed=h)[0] for h, w in [(20, 50), (64, 17), (33, 33), (18, 24)]]
    for batch, b in [(tensor_batch, 3), (list_batch, 4)]:
        outs = as_list(block(batch))
        assert [tuple(o.shape) for o in outs] == expected_shapes(kind, b)
        assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("kind, views", [("simclr", 1), ("simclr", 3), ("moco_v1", 2), ("moco_v2", 3),
                                         ("mae", 2), ("ijepa", 2), ("clip", 2)])
def test_views_are_a_leading_axis(kind, views):
    out = make(kind, views=views)(random_batch(b=2))
    assert out.shape == ((2, 3, 16, 16) if views == 1 else (views, 2, 3, 16, 16))


def test_dino_without_local_crops_has_an_empty_local_axis():
    crops = make("dino", local_crops=0)(random_batch(b=2))
    assert crops.global_crops.shape == (2, 2, 3, 16, 16)
    assert crops.local_crops.shape == (0, 2, 3, 8, 8) and crops.local_crops.dtype == torch.float32


# ----- randomness -----

@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_each_sample_draws_its_own_parameters(kind):
    image = random_batch(b=1, h=48, w=40)[0]
    torch.manual_seed(1)
    outs = as_list(make(kind)(torch.stack([image, image])))  # the same image twice in one batch
    for out in outs:
        if out.shape[0] == 0:
            continue
        batch_axis = 0 if out.ndim == 4 else 1
        first, second = out.unbind(batch_axis)
        assert not torch.allclose(first, second), f"augment.{kind}: two samples of one image are identical"


@pytest.mark.parametrize("kind", ["simclr", "moco_v3", "dino"])
def test_views_differ(kind):
    torch.manual_seed(2)
    out = as_list(make(kind)(random_batch(b=2, h=48, w=40)))
    assert not torch.allclose(out[0][0], out[0][1])
    if kind == "dino":
        assert not torch.allclose(out[1][0], out[1][1])


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_under_manual_seed(kind):
    block, batch = make(kind), random_batch(b=2, h=48, w=40)
    runs = {}
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.setdefault(seed, []).append(as_list(block(batch)))
    (a, b), (c,) = runs[5], runs[6]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    same_as_other_seed = all(torch.equal(x, y) for x, y in zip(a, c))
    assert same_as_other_seed == (kind == "resize")  # only the evaluation resize ignores the seed


# ----- asymmetric views: solarization only where the recipe puts it -----

def solarized(views, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(V, B) bool: a white input stays >= 0.6 after brightness jitter (factor >= 0.6) and grayscale, and
    drops to <= 0.4 only if solarized (255 - v for v >= 128)."""
    return denormalise(views, mean, std).mean(dim=(-3, -2, -1)) < 0.5


def test_moco_v3_solarizes_only_the_second_view():
    n = 400
    torch.manual_seed(3)
    views = make("moco_v3", size=8)(torch.full((n, 3, 8, 8), 255, dtype=torch.uint8))
    rate = solarized(views).float().mean(dim=1)
    assert rate[0] == 0.0
    assert abs(rate[1] - 0.2) < 0.06, rate  # 3 standard deviations of a binomial(400, 0.2) rate


def test_dino_solarizes_only_the_second_global_crop():
    n = 400
    torch.manual_seed(4)
    crops = make("dino", global_size=8, local_size=8, local_crops=1)(torch.full((n, 3, 8, 8), 255, dtype=torch.uint8))
    global_rate = solarized(crops.global_crops).float().mean(dim=1)
    assert global_rate[0] == 0.0
    assert abs(global_rate[1] - 0.2) < 0.06, global_rate
    assert not solarized(crops.local_crops).any()


# ----- normalisation -----

COLOUR = (10, 128, 250)


def constant_image(colour=COLOUR, h=24, w=20):
    return torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()


@pytest.mark.parametrize("kind, mean, std", [("resize", IMAGENET_MEAN, IMAGENET_STD),
                                             ("mae", IMAGENET_MEAN, IMAGENET_STD),
                                             ("ijepa", IMAGENET_MEAN, IMAGENET_STD),
                                             ("clip", CLIP_MEAN, CLIP_STD)])
def test_constant_image_maps_to_its_normalised_value(kind, mean, std):
    # crops, resizes and flips leave a constant image constant, so the output is (c / 255 - mean) / std
    out = make(kind)([constant_image(), constant_image(h=50, w=31)])
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(COLOUR, mean, std)]).view(3, 1, 1)
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-5, rtol=0)


def test_custom_mean_and_std():
    out = make("resize", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(constant_image()[None])
    expected = torch.tensor([(10 / 255 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, (250 / 255 - 0.5) / 1.0])
    torch.testing.assert_close(out[0, :, 0, 0], expected, atol=1e-6, rtol=0)


def test_resize_is_shorter_side_then_center_crop():
    # a 32 x 64 image whose left and right quarters are black: 16 / 0.5 = resize to 32 (a no-op), center crop
    # 32 x 32 keeps exactly the middle half, which is white
    image = torch.zeros(3, 32, 64, dtype=torch.uint8)
    image[:, :, 16:48] = 255
    out = make("resize", size=32, crop_fraction=1.0, mean=(0, 0, 0), std=(1, 1, 1))(image[None])
    torch.testing.assert_close(out, torch.ones(1, 3, 32, 32))


# ----- BEiT: one crop, two resolutions -----

@pytest.mark.parametrize("pixels, expected", [("unit", lambda u: u), ("dalle", lambda u: 0.8 * u + 0.1),
                                              ("symmetric", lambda u: 2 * u - 1)])
def test_beit_tokenizer_image_is_the_same_crop(pixels, expected):
    # with equal sizes both copies come from one jittered, flipped crop and one bicubic resize
    torch.manual_seed(7)
    views = make("beit", size=12, tokenizer_size=12, tokenizer_pixels=pixels)(random_batch(b=3, h=40, w=36))
    unit = denormalise(views.image, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(views.tokenizer_image, expected(unit), atol=1e-5, rtol=0)


def test_beit_dalle_pixels_lie_in_the_logit_laplace_range():
    views = make("beit")(random_batch(b=3))
    assert views.tokenizer_image.min() >= 0.1 - 1e-6 and views.tokenizer_image.max() <= 0.9 + 1e-6


# ----- blur kernels -----

def test_simclr_blur_kernel_follows_data_util():
    # data_util.py: kernel_size = side // 10; radius = int(kernel_size / 2); kernel = 2 * radius + 1
    assert [simclr_blur_kernel(s) for s in (224, 96, 32, 16)] == [23, 9, 3, 1]


def test_pil_kernel_reproduces_pillow_gaussian_blur():
    g = torch.Generator().manual_seed(0)
    smooth = torch.rand(1, 3, 8, 8, generator=g) * 255
    image = torch.nn.functional.interpolate(smooth, size=(48, 48), mode="bilinear")[0].round().to(torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    kernel = pil_blur_kernel(2.0, 48)
    assert kernel == 13

    def gap(sigma, k):  # mean / max absolute difference to Pillow away from the borders
        ref = torch.from_numpy(np.array(pil.filter(ImageFilter.GaussianBlur(radius=sigma)))).permute(2, 0, 1)
        d = (F.gaussian_blur(image, [k, k], [sigma, sigma]).float() - ref.float())[:, 8:-8, 8:-8].abs()
        return d.mean().item(), d.max().item()

    for sigma in (0.5, 1.0, 2.0):
        mean_gap, max_gap = gap(sigma, kernel)
        assert mean_gap < 0.6 and max_gap <= 3, (sigma, mean_gap, max_gap)
    assert gap(2.0, 5)[0] > 3  # a kernel too small for sigma 2 is visibly different: the check discriminates
    assert pil_blur_kernel(2.0, 4) == 7  # capped for reflect padding on tiny images


# ----- errors -----

@pytest.mark.parametrize("kind, kwargs, words", [
    ("simclr", {"scale": (0.5, 0.2)}, "scale"),
    ("simclr", {"strength": 3.0}, "strength"),
    ("simclr", {"blur_prob": 1.5}, "probability"),
    ("simclr", {"views": 0}, "views"),
    ("moco_v1", {"views": 0}, "views"),
    ("moco_v2", {"scale": (0.0, 1.0)}, "scale"),
    ("moco_v2", {"size": 0}, "size"),
    ("moco_v3", {"crop_min": 1.5}, "crop_min"),
    ("dino", {"local_crops": -1}, "local_crops"),
    ("dino", {"global_scale": (0.4, 1.2)}, "global_scale"),
    ("dino", {"local_scale": (0.05,)}, "local_scale"),
    ("beit", {"tokenizer_size": 0}, "tokenizer_size"),
    ("beit", {"tokenizer_pixels": "lanczos"}, "tokenizer_pixels"),
    ("mae", {"mean": (0.5, 0.5)}, "mean"),
    ("ijepa", {"std": (0.2, 0.0, 0.2)}, "std"),
    ("clip", {"size": 2.5}, "size"),
    ("resize", {"crop_fraction": 0.0}, "crop_fraction"),
])
def test_illegal_parameters_raise_naming_the_block(kind, kwargs, words):
    with pytest.raises(ValueError, match=rf"augment\.{kind}: .*{words}"):
        make(kind, **kwargs)


@pytest.mark.parametrize("bad", [
    torch.rand(2, 3, 16, 16),  # float instead of uint8
    torch.zeros(2, 1, 16, 16, dtype=torch.uint8),  # one channel
    torch.zeros(3, 16, 16, dtype=torch.uint8),  # missing batch axis
    [],  # empty batch
    [torch.zeros(3, 16, 16, dtype=torch.uint8), torch.zeros(16, 16, 3, dtype=torch.uint8)],  # channels last
])
def test_bad_inputs_raise_naming_the_block(bad):
    with pytest.raises(ValueError, match=r"augment\.mae: "):
        make("mae")(bad)
