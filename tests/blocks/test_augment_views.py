"""augment.views and augment.multi_crop: recipes written as YAML views against the fixed-recipe blocks.

References: ``augment.dino`` (facebookresearch/dino · main_dino.py · DataAugmentationDINO) and
``augment.simclr`` (google-research/simclr · data_util.py · preprocess_for_train) rebuilt from view mappings
must give bit-identical outputs under the same torch seed; MoCo v3's asymmetry (facebookresearch/moco-v3 ·
main_moco.py · augmentation1/augmentation2: blur p1.0/p0.1, solarize p0/p0.2) must show in rates measured on
the outputs of the batched path; wrong keys give one-line errors naming the block, the view and the key.
"""
import math

import pytest
import torch

from composer.blocks import registry

pytestmark = pytest.mark.usefixtures("one_thread")  # as in DataLoader workers (tests/conftest.py)


def make(kind, **kw):
    return registry.get(f"augment.{kind}").cls(**kw)


def random_batch(b=4, h=40, w=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def run(block, image, seed, batched):
    assert block.use_batched(batched) == batched
    torch.manual_seed(seed)
    return block(image)


DINO_DEFAULTS = {"interpolation": "bicubic", "jitter": [0.4, 0.4, 0.2, 0.1], "gray": 0.2}


def dino_views(g, l, local_crops, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)):
    return {"defaults": DINO_DEFAULTS,
            "global_views": [{"size": g, "scale": list(global_scale), "blur": 1.0},
                             {"size": g, "scale": list(global_scale), "blur": 0.1, "solarize": 0.2}],
            "local_views": [{"size": l, "scale": list(local_scale), "blur": 0.5, "repeat": local_crops}]}


@pytest.mark.parametrize("batched", [False, True], ids=["per_sample", "batched"])
def test_multi_crop_configured_like_dino_equals_augment_dino(batched):
    dino = make("dino", global_size=24, local_size=12, local_crops=3, global_scale=(0.3, 1.0))
    mine = make("multi_crop", **dino_views(24, 12, 3, global_scale=(0.3, 1.0)))
    image = [random_batch(1, 40, 30, seed=1)[0], random_batch(1, 33, 50, seed=2)[0], random_batch(1, 28, 28)[0]]
    for seed in (0, 1):
        ref, out = run(dino, image, seed, batched), run(mine, image, seed, batched)
        assert out.global_crops.shape == (2, 3, 3, 24, 24) and out.local_crops.shape == (3, 3, 3, 12, 12)
        assert torch.equal(out.global_crops, ref.global_crops)
        assert torch.equal(out.local_crops, ref.local_crops)
    assert not torch.equal(run(mine, image, 0, batched).global_crops, run(mine, image, 1, batched).global_crops)


def test_multi_crop_without_local_views_has_an_empty_local_axis():
    out = make("multi_crop", defaults={"size": 8}, global_views=[{"size": 16}], local_views=[])(random_batch(b=2))
    assert out.global_crops.shape == (1, 2, 3, 16, 16) and out.local_crops.shape == (0, 2, 3, 8, 8)


SIMCLR = {"interpolation": "bicubic", "jitter": [0.8, 0.8, 0.8, 0.2], "gray": 0.2, "blur": 0.5,
          "blur_kernel": "simclr"}


@pytest.mark.parametrize("batched", [False, True], ids=["per_sample", "batched"])
def test_views_configured_like_simclr_equals_augment_simclr(batched):
    # 32 px: SimCLR's kernel is 2·((32 // 10) // 2) + 1 = 3 taps, so the blur really runs
    simclr = make("simclr", size=32)
    mine = make("views", defaults={**SIMCLR, "size": 32}, views=[{}, {"repeat": 1}])
    image = random_batch(b=5, h=48, w=40)
    for seed in (0, 3):
        ref, out = run(simclr, image, seed, batched), run(mine, image, seed, batched)
        assert out.shape == (2, 5, 3, 32, 32)
        assert torch.equal(out, ref)
    assert mine._pipelines()[0].transforms[-1].transforms[0].kernel_size == (3, 3)


def test_repeat_counts_views_and_reuses_one_pipeline():
    block = make("views", defaults={"size": 8}, views=[{"blur": 1.0}, {"repeat": 3}])
    assert block(random_batch(b=2)).shape == (4, 2, 3, 8, 8)
    assert len(block.groups[0]) == 4 and len(block._pipelines()) == 2


def test_moco_v3_asymmetry_shows_in_batched_rates():
    """main_moco.py: augmentation1 blurs with p1.0 and never solarizes, augmentation2 blurs with p0.1 and
    solarizes with p0.2. The crop is the identity here (scale = ratio = 1 on a square source of the view's
    size) and sigma U(1, 2) so that every blur is visible: on gray noise (R = G = B, where saturation, hue and
    grayscale do nothing) a blur of sigma >= 1 lowers the neighbour-difference/std ratio from ~1.4 to < 0.8,
    whatever the brightness and contrast factors. A white image is solarized iff its output is < 0.5."""
    n, s = 400, 16
    block = make("views", defaults={"size": s, "scale": [1, 1], "ratio": [1, 1], "jitter": [0.4, 0.4, 0.2, 0.1],
                                    "gray": 0.2, "blur_sigma": [1.0, 2.0]},
                 views=[{"blur": 1.0}, {"blur": 0.1, "solarize": 0.2}], mean=(0, 0, 0), std=(1, 1, 1))
    noise = torch.randint(80, 171, (n, 1, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = run(block, noise.expand(n, 3, s, s).contiguous(), 0, batched=True)[:, :, 0]  # (2, n, S, S)
    roughness = (out[..., 1:] - out[..., :-1]).abs().mean((-2, -1)) / out.std((-2, -1))
    assert not ((roughness > 0.8) & (roughness < 1.0)).any()  # two clearly separated populations
    blurred = (roughness < 0.9).double().mean(1)
    white = run(block, torch.full((n, 3, s, s), 255, dtype=torch.uint8), 1, batched=True)
    solarized = (white.mean((2, 3, 4)) < 0.5).double().mean(1)

    def within(rate, p):  # 4 binomial standard errors
        return abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12

    assert within(blurred[0].item(), 1.0) and within(blurred[1].item(), 0.1), blurred
    assert within(solarized[0].item(), 0.0) and within(solarized[1].item(), 0.2), solarized


@pytest.mark.parametrize("kind,kw,needle", [
    ("views", {"views": [{}, {"blurr": 0.1}]}, "views[1].blurr: unknown key 'blurr' (did you mean 'blur'?)"),
    ("views", {"views": [{"blur": 1.5}]}, "views[0].blur: is a probability"),
    ("views", {"views": [{"solarize": -0.1}]}, "views[0].solarize: is a probability"),
    ("views", {"views": [{"scale": [0.5, 0.2]}]}, "views[0].scale: needs low <= high"),
    ("views", {"views": [{"scale": [0.0, 1.0]}]}, "views[0].scale: is a crop-area range"),
    ("views", {"views": [{"blur": 0.5, "blur_kernel": 4}]}, "views[0].blur_kernel: must be 'pil', 'simclr' or an odd"),
    ("views", {"views": [{"size": 4, "blur": 0.5, "blur_kernel": 9}]}, "views[0].blur_kernel: 9 taps"),
    ("views", {"views": [{"size": 16}, {"size": 8}]}, "views[1].size: is 8 but views[0] is 16"),
    ("views", {"views": []}, "views: is empty"),
    ("views", {"views": [{"jitter": [0.4, 0.4, 0.2, 0.7]}]}, "views[0].jitter: needs factors >= 0 and hue <= 0.5"),
    ("views", {"views": [{"interpolation": "bicubc"}]}, "did you mean 'bicubic'"),
    ("views", {"views": [{"repeat": 0}]}, "views[0].repeat: needs an int >= 1"),
    ("views", {"views": [{"size": 16.0}]}, "views[0].size: needs an int in [1, 1024]"),
    ("views", {"views": [{"size": 2241}]}, "views[0].size: needs an int in [1, 1024]"),
    ("views", {"views": [{}], "defaults": {"gray": 2}}, "defaults.gray: is a probability"),
    ("views", {"views": [3]}, "views[0]: a view is a mapping"),
    ("multi_crop", {"global_views": []}, "global_views: is empty"),
    ("multi_crop", {"global_views": [{}], "local_views": [{"size": 8}, {"size": 6}]},
     "local_views[1].size: is 6 but local_views[0] is 8"),
])
def test_parameter_errors_are_one_line(kind, kw, needle):
    with pytest.raises(ValueError) as info:
        make(kind, **kw)
    message = str(info.value)
    assert message.startswith(f"augment.{kind}: ") and needle in message, message
    assert "\n" not in message


def test_a_wrong_view_key_in_a_graph_is_one_line_at_its_line(capsys):
    from pathlib import Path

    from composer.cli import main
    path = Path(__file__).parents[1] / "graph" / "broken" / "augment_view_bad_key.yaml"
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    line_no = int(err.split(":")[1])
    assert "blurr" in path.read_text().splitlines()[line_no - 1]


YAML_DINO = """
name: yaml_dino
inputs: [image]
blocks:
  aug:
    type: augment.multi_crop
    defaults: {interpolation: bicubic, jitter: [0.4, 0.4, 0.2, 0.1], gray: 0.2}
    global_views: [{size: 16, scale: [0.4, 1], blur: 1.0}, {size: 16, scale: [0.4, 1], blur: 0.1, solarize: 0.2}]
    local_views: [{size: 8, scale: [0.05, 0.4], blur: 0.5, repeat: 4}]
  encoder: {type: encoder.timm, arch: test_resnet}
  head:    {type: head.mlp, dims: [96, 24]}
  loss_fn: {type: loss.nt_xent}
flow:
  crops: {aug: image}
  z:     {head: {encoder: crops.global_crops}}
  zl:    {head: {encoder: crops.local_crops}}
  loss:  {loss_fn: z}
"""


def test_explain_names_the_sizes_of_multi_crop_like_augment_dino(tmp_path):
    """The dry run gives both outputs' shapes, written with DINO's symbols G, L, V as for augment.dino."""
    import composer
    from composer.draw.measure import symbolic_shapes
    path = tmp_path / "yaml_dino.yaml"
    path.write_text(YAML_DINO)
    shapes = symbolic_shapes(composer.load(path))
    assert shapes.of("crops") == "global_crops: 2 x N x 3 x G x G, local_crops: V x N x 3 x L x L"
    assert {k: (s.value, s.where) for k, s in shapes.symbols.items() if k in "GLV"} == {
        "G": (16, "aug.global_views"), "L": (8, "aug.local_views"), "V": (4, "aug.local_views")}


@pytest.mark.parametrize("field,needle", [
    ("local_crops", "patch_size 12 exceeds the 8-pixel images"),
    ("global_crops", "(the 1x1 grid of 16-pixel images in 12-pixel patches)"),
])
def test_maskers_are_checked_against_the_side_of_the_crops_they_get(tmp_path, capsys, field, needle):
    """graph/ranges.py reads each output's side from the views (local 8 px, global 16 px)."""
    from composer.cli import main
    text = YAML_DINO.replace("loss_fn: {type: loss.nt_xent}",
                             "loss_fn: {type: loss.nt_xent}\n  masker: {type: mask.random, ratio: 0.5, patch_size: 12}")
    text = text.replace("zl:    {head: {encoder: crops.local_crops}}", f"m:     {{masker: crops.{field}}}")
    path = tmp_path / "masked.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_the_documented_example_builds_and_its_multi_crop_is_dino():
    """docs/augmentation.md's example: both blocks build, and the multi-crop reads as augment.dino's views."""
    import re
    from pathlib import Path

    import yaml

    from composer.blocks.augment_batched import spec_of
    doc = (Path(__file__).parents[2] / "docs" / "augmentation.md").read_text()
    section = doc.split("## Describing views in YAML", 1)[1]
    blocks = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1))["blocks"]
    built = {name: make(cfg.pop("type").split(".", 1)[1], **cfg) for name, cfg in blocks.items()}
    assert built["aug"].size == 224 and len(built["aug"].groups[0]) == 2
    assert [spec_of(p) for p in built["crops"]._pipelines()] == [spec_of(p) for p in make("dino")._pipelines()]


def test_a_threshold_the_batched_path_lacks_keeps_the_block_per_sample():
    block = make("views", views=[{"size": 8, "solarize": 0.5, "solarize_threshold": 100}])
    assert not block.use_batched(True) and "RandomSolarize" in block.batched_reason()
    assert make("views", views=[{"size": 8, "solarize": 0.5}]).use_batched(True)
