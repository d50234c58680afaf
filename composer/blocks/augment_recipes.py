"""Augmentation recipes with asymmetric views (MoCo v3, DINO), two resolutions (BEiT), one crop (MAE, I-JEPA,
CLIP) and the deterministic evaluation resize. The shared machinery and the blur-kernel conventions are in
``blocks/augment.py``.
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from composer.blocks.augment import (
    BICUBIC,
    BILINEAR,
    BLUR_SIGMA,
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RATIO,
    SOLARIZE_THRESHOLD,
    Augment,
    RepeatedViews,
    blur,
    colour_jitter,
    pil_blur_kernel,
)
from composer.blocks.augment_views import MultiCropAugment, MultiCrops
from composer.blocks.registry import block


def _jitter_gray() -> list:
    """The colour part shared by MoCo v3 and DINO: ColorJitter(0.4, 0.4, 0.2, 0.1) p0.8 → grayscale p0.2."""
    return [colour_jitter(0.4, 0.4, 0.2, 0.1, p=0.8), v2.RandomGrayscale(p=0.2)]


@block("augment.moco_v3")
class MoCoV3Augment(Augment):
    """MoCo v3's two asymmetric views (facebookresearch/moco-v3 · main_moco.py augmentation1/augmentation2).

    Both views: RandomResizedCrop(size, scale (crop_min, 1), ratio 3/4–4/3, bilinear) → ColorJitter(0.4, 0.4,
    0.2, 0.1) p0.8 → grayscale p0.2 → Gaussian blur sigma U(0.1, 2) (PIL-equivalent kernel, ``pil_blur_kernel``)
    → solarize (threshold 128) → flip p0.5. View 0 blurs with p1.0 and never solarizes; view 1 blurs with p0.1
    and solarizes with p0.2.

    Args:
        size: output side S (224; main_moco.py).
        crop_min: lower bound of the crop-area range (0.08 = main_moco.py default, used for ViT; the README's
            ResNet-50 runs pass ``--crop-min=.2``).
        mean: per-channel normalisation mean (ImageNet mean; main_moco.py).
        std: per-channel normalisation std (ImageNet std; main_moco.py).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (2, B, 3, S, S) float32: view 0 = augmentation1, view 1 = augmentation2.
    """

    def __init__(self, *, size: int = 224, crop_min: float = 0.08,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(mean=mean, std=std)
        self.size = self._check_size("size", size)
        scale = self._check_scale("crop_min", (crop_min, 1.0))
        kernel = pil_blur_kernel(BLUR_SIGMA[1], size)

        def view(blur_prob: float, solarize_prob: float) -> v2.Compose:
            return v2.Compose([
                v2.RandomResizedCrop(size, scale=scale, ratio=RATIO, interpolation=BILINEAR),
                *_jitter_gray(),
                blur(kernel, blur_prob),
                v2.RandomSolarize(SOLARIZE_THRESHOLD, p=solarize_prob),
                v2.RandomHorizontalFlip(),
            ])

        self.view0 = view(blur_prob=1.0, solarize_prob=0.0)
        self.view1 = view(blur_prob=0.1, solarize_prob=0.2)

    def forward(self, image: Tensor | list[Tensor]) -> Tensor:
        return self._views([self.view0, self.view1], self._samples(image), self.size)


DinoCrops = MultiCrops  # DINO's output: global crops (2, B, 3, G, G) and local crops (V, B, 3, L, L)


@block("augment.dino")
class DinoAugment(MultiCropAugment):
    """DINO's multi-crop augmentation (facebookresearch/dino · main_dino.py · DataAugmentationDINO).

    Every crop: RandomResizedCrop(ratio 3/4–4/3, bicubic) → flip p0.5 → ColorJitter(0.4, 0.4, 0.2, 0.1) p0.8 →
    grayscale p0.2 → Gaussian blur sigma U(0.1, 2) (PIL-equivalent kernel, ``pil_blur_kernel``). Global crop 1
    blurs with p1.0; global crop 2 blurs with p0.1 and then solarizes (threshold 128) with p0.2; local crops
    blur with p0.5. The recipe is ``augment.multi_crop`` with these views (``DINO_DEFAULTS``, ``dino_views``).

    Args:
        global_size: side G of the two global crops (224; DataAugmentationDINO).
        local_size: side L of the local crops (96; DataAugmentationDINO).
        local_crops: number of local crops V (8; main_dino.py ``--local_crops_number``); 0 gives (0, B, 3, L, L).
        global_scale: crop-area range of the global crops ((0.4, 1); ``--global_crops_scale``; 0.14–1 for
            the README's ResNet-50 run).
        local_scale: crop-area range of the local crops ((0.05, 0.4); ``--local_crops_scale``; 0.05–0.14
            for the README's ResNet-50 run).
        mean: per-channel normalisation mean (ImageNet mean; DataAugmentationDINO).
        std: per-channel normalisation std (ImageNet std; DataAugmentationDINO).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns ``DinoCrops(global_crops (2, B, 3, G, G), local_crops (V, B, 3, L, L))``, float32.
    """

    ranges: ClassVar[dict] = {}  # its own parameters take their ranges by name (composer.blocks.ranges)

    def __init__(self, *, global_size: int = 224, local_size: int = 96, local_crops: int = 8,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        # checked first, so that an error names DINO's own parameter (the checks only read the kind)
        self._check_size("global_size", global_size)
        self._check_size("local_size", local_size)
        self._check_count("local_crops", local_crops, 0)
        global_scale = list(self._check_scale("global_scale", global_scale))
        local_scale = list(self._check_scale("local_scale", local_scale))
        super().__init__(**dino_views(global_size, local_size, local_crops, global_scale, local_scale),
                         mean=mean, std=std)
        self.local_crops = local_crops


DINO_DEFAULTS = {"interpolation": "bicubic", "jitter": [0.4, 0.4, 0.2, 0.1], "gray": 0.2}


def dino_views(global_size: int, local_size: int, local_crops: int, global_scale: list, local_scale: list) -> dict:
    """DataAugmentationDINO as ``augment.multi_crop`` parameters."""
    local = [{"size": local_size, "scale": local_scale, "blur": 0.5, "repeat": local_crops}] if local_crops else []
    return {"defaults": {**DINO_DEFAULTS, "size": local_size},
            "global_views": [{"size": global_size, "scale": global_scale, "blur": 1.0},
                             {"size": global_size, "scale": global_scale, "blur": 0.1, "solarize": 0.2}],
            "local_views": local}


class BeitViews(NamedTuple):
    """BEiT's two resolutions of one crop: the ViT input (B, 3, S, S) and the tokenizer input (B, 3, T, T)."""

    image: Tensor
    tokenizer_image: Tensor


@block("augment.beit")
class BeitAugment(Augment):
    """BEiT's augmentation (microsoft/unilm · beit/datasets.py · DataAugmentationForBEiT; transforms.py ·
    RandomResizedCropAndInterpolationWithTwoPic).

    Per sample, in the official order: ColorJitter(0.4, 0.4, 0.4) (always, on the full image) → flip p0.5 →
    one RandomResizedCrop box (scale, ratio 3/4–4/3) resized twice: to ``size`` (bicubic, normalised with
    mean/std) and to ``tokenizer_size`` for the dVAE. BEiT resizes the tokenizer copy with PIL's Lanczos,
    which v2 does not offer on tensors; antialiased bicubic is used instead (the nearest kernel v2 has: both
    are antialiased separable low-pass filters, Lanczos-3 with a 3-pixel lobe, bicubic with 2).

    Args:
        size: side S of the ViT input (224; run_beit_pretraining.py ``--input_size``).
        tokenizer_size: side T of the tokenizer input (112; ``--second_input_size``).
        scale: crop-area range ((0.08, 1); ``--min_crop_scale`` 0.08).
        tokenizer_pixels: value map of the tokenizer input; "dalle" is DALL-E's map_pixels 0.8·x + 0.1 on
            [0, 1] (``--discrete_vae_type dall-e``), "unit" leaves [0, 1], "symmetric" is 2·x − 1 (the
            ``customized`` VAE, Normalize with mean/std 0.5).
        mean: normalisation mean of the ViT input (ImageNet mean, the README's
            ``--imagenet_default_mean_and_std``; BEiT's own default is 0.5).
        std: normalisation std of the ViT input (ImageNet std with that flag; otherwise 0.5).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns ``BeitViews(image (B, 3, S, S), tokenizer_image (B, 3, T, T))``, float32.
    """

    batchable = False  # one crop box resized twice after a full-image jitter: its own per-sample code

    def __init__(self, *, size: int = 224, tokenizer_size: int = 112, scale: tuple[float, float] = (0.08, 1.0),
                 tokenizer_pixels: Literal["dalle", "unit", "symmetric"] = "dalle",
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(mean=mean, std=std)
        self.size = self._check_size("size", size)
        self.tokenizer_size = self._check_size("tokenizer_size", tokenizer_size)
        self.scale = list(self._check_scale("scale", scale))
        if tokenizer_pixels not in ("dalle", "unit", "symmetric"):
            raise self._error(f"tokenizer_pixels must be 'dalle', 'unit' or 'symmetric', got {tokenizer_pixels!r}")
        self.tokenizer_pixels = tokenizer_pixels
        self.jitter_flip = v2.Compose([v2.ColorJitter(0.4, 0.4, 0.4), v2.RandomHorizontalFlip()])

    def _two_pics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.jitter_flip(x)
        top, left, h, w = v2.RandomResizedCrop.get_params(x, self.scale, list(RATIO))
        return (F.resized_crop(x, top, left, h, w, [self.size] * 2, interpolation=BICUBIC, antialias=True),
                F.resized_crop(x, top, left, h, w, [self.tokenizer_size] * 2, interpolation=BICUBIC, antialias=True))

    def forward(self, image: Tensor | list[Tensor]) -> BeitViews:
        pairs = [self._two_pics(x) for x in self._samples(image)]
        vit = self.to_float(torch.stack([a for a, _ in pairs]))
        unit = torch.stack([b for _, b in pairs]).to(torch.float32) / 255
        if self.tokenizer_pixels == "dalle":
            unit = 0.8 * unit + 0.1  # openai/DALL-E · dall_e/utils.py · map_pixels (logit_laplace_eps 0.1)
        elif self.tokenizer_pixels == "symmetric":
            unit = 2 * unit - 1
        return BeitViews(vit, unit)


@block("augment.mae")
class MAEAugment(RepeatedViews):
    """MAE's augmentation (facebookresearch/mae · main_pretrain.py): RandomResizedCrop(size, scale, ratio
    3/4–4/3, bicubic) → horizontal flip p0.5.

    Args:
        size: output side S (224; main_pretrain.py ``--input_size``).
        views: number of views V (1 in MAE).
        scale: crop-area range ((0.2, 1); main_pretrain.py).
        mean: per-channel normalisation mean (ImageNet mean; main_pretrain.py).
        std: per-channel normalisation std (ImageNet std; main_pretrain.py).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (B, 3, S, S) float32, or (V, B, 3, S, S) when views > 1.
    """

    def __init__(self, *, size: int = 224, views: int = 1, scale: tuple[float, float] = (0.2, 1.0),
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(size=size, views=views, mean=mean, std=std)
        self.pipeline = v2.Compose([self._crop(scale, BICUBIC), v2.RandomHorizontalFlip()])


@block("augment.ijepa")
class IJepaAugment(RepeatedViews):
    """I-JEPA's augmentation (facebookresearch/ijepa · src/transforms.py · make_transforms with the configs'
    ``use_horizontal_flip/use_color_distortion/use_gaussian_blur: false``): RandomResizedCrop(size, scale,
    ratio 3/4–4/3, bilinear) only.

    Args:
        size: output side S (224; configs ``crop_size``).
        views: number of views V (1 in I-JEPA).
        scale: crop-area range ((0.3, 1); configs ``crop_scale``).
        mean: per-channel normalisation mean (ImageNet mean; make_transforms).
        std: per-channel normalisation std (ImageNet std; make_transforms).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (B, 3, S, S) float32, or (V, B, 3, S, S) when views > 1.
    """

    def __init__(self, *, size: int = 224, views: int = 1, scale: tuple[float, float] = (0.3, 1.0),
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(size=size, views=views, mean=mean, std=std)
        self.pipeline = v2.Compose([self._crop(scale, BILINEAR)])


@block("augment.clip")
class ClipAugment(RepeatedViews):
    """open_clip's training transform (mlfoundations/open_clip · transform.py · image_transform, is_train,
    default AugmentationCfg): RandomResizedCrop(size, scale, ratio 3/4–4/3, bicubic), no flip, CLIP mean/std.

    Args:
        size: output side S (224 for ViT-B/32 and ViT-B/16; the model config's image_size).
        views: number of views V (1 in CLIP).
        scale: crop-area range ((0.9, 1); AugmentationCfg.scale).
        mean: per-channel normalisation mean (OPENAI_DATASET_MEAN (0.48145466, 0.4578275, 0.40821073)).
        std: per-channel normalisation std (OPENAI_DATASET_STD (0.26862954, 0.26130258, 0.27577711)).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (B, 3, S, S) float32, or (V, B, 3, S, S) when views > 1.
    """

    def __init__(self, *, size: int = 224, views: int = 1, scale: tuple[float, float] = (0.9, 1.0),
                 mean: tuple[float, float, float] = CLIP_MEAN, std: tuple[float, float, float] = CLIP_STD):
        super().__init__(size=size, views=views, mean=mean, std=std)
        self.pipeline = v2.Compose([self._crop(scale, BICUBIC)])


@block("augment.resize")
class ResizeAugment(RepeatedViews):
    """Deterministic evaluation transform: resize the shorter side to floor(size / crop_fraction) (bicubic,
    antialiased) → center crop size → normalise (DINO eval_linear.py, MAE main_linprobe.py: Resize(256,
    interpolation=3) + CenterCrop(224); open_clip's eval transform is crop_fraction 1).

    Args:
        size: output side S (224).
        crop_fraction: fraction of the resized shorter side kept by the center crop (0.875 = 224/256;
            1.0 for open_clip's Resize(224) + CenterCrop(224)).
        mean: per-channel normalisation mean (ImageNet mean).
        std: per-channel normalisation std (ImageNet std).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (B, 3, S, S) float32.
    """

    def __init__(self, *, size: int = 224, crop_fraction: float = 0.875,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(size=size, views=1, mean=mean, std=std)
        if not 0.0 < crop_fraction <= 1.0:
            raise self._error(f"crop_fraction must lie in (0, 1], got {crop_fraction!r}")
        # floor like timm's scale_size; the epsilon keeps 224 / 0.875 at 256 despite float error.
        resize_to = math.floor(self.size / crop_fraction + 1e-6)
        self.pipeline = v2.Compose([v2.Resize(resize_to, interpolation=BICUBIC, antialias=True),
                                    v2.CenterCrop(self.size)])
