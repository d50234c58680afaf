"""Augmentation blocks: the official pre-training pipelines, rebuilt on ``torchvision.transforms.v2``.

Every block is a data-stage block (``stage = "data"``): it runs in DataLoader workers on a collated raw batch.

- input ``image``: a uint8 tensor ``(B, 3, H, W)`` or a list of ``B`` uint8 tensors ``(3, H_i, W_i)`` (real
  data has varying sizes);
- each sample draws its own random parameters, as the official pipelines do per image (v2 transforms draw
  one set of parameters per call, so the pipeline is called once per sample and view);
- the geometric and colour operations run on uint8 (the v2 fast path), then ``ToDtype(float32, scale=True)``
  and ``Normalize(mean, std)`` run once on the stacked batch;
- views are a leading axis: ``views: 1`` gives ``(B, 3, S, S)``, ``views: V > 1`` gives ``(V, B, 3, S, S)``.

All randomness comes from torch's global generator, so ``torch.manual_seed`` (or the DataLoader's per-worker
seeding) makes a block deterministic.

Batched path. ``block.use_batched(True)`` switches a recipe to ``composer.blocks.augment_batched``: the same
v2 pipelines (read by ``spec_of``, so the two paths share their parameters) run as batch operations with
per-sample parameters, on whatever device the image batch is on. Its parameters come from a CPU generator
seeded by one draw of torch's global generator per call, so seeding stays as above.

Gaussian blur. torchvision's ``GaussianBlur`` needs a kernel size; the official pipelines define it two ways:

- SimCLR (google-research/simclr · data_util.py · random_blur, gaussian_blur): ``kernel_size = side // 10``,
  ``radius = kernel_size // 2``, kernel ``2·radius + 1`` (23 at 224 px, 3 at 32 px, 1 (no blur) at 16 px),
  sigma ~ U(0.1, 2). See :func:`simclr_blur_kernel`.
- MoCo v2/v3 and DINO use PIL's ``ImageFilter.GaussianBlur(radius=sigma)``, sigma ~ U(0.1, 2), whose kernel
  does not depend on the image size. Pillow approximates the Gaussian by three box blurs
  (``_gaussian_blur_radius``); their combined support is about ``2·ceil(3σ) + 1`` taps (13 at σ = 2, checked
  against Pillow in tests/blocks/test_augment.py). One kernel of 13 taps therefore covers every σ ≤ 2: for a
  smaller σ the extra taps carry weight ~0. See :func:`pil_blur_kernel`.

torchvision pads with ``reflect`` where SimCLR zero-pads ('SAME') and Pillow repeats the edge; only the
border pixels differ.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from composer.blocks import augment_batched
from composer.blocks.registry import block

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# openai/CLIP · clip/clip.py · _transform; open_clip · constants.py · OPENAI_DATASET_MEAN/STD.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range in every recipe here
BLUR_SIGMA = (0.1, 2.0)  # sigma ~ U(0.1, 2) in SimCLR, MoCo v2/v3 and DINO
SOLARIZE_THRESHOLD = 128  # PIL ImageOps.solarize default: values >= 128 are inverted (MoCo v3, DINO)
BILINEAR = v2.InterpolationMode.BILINEAR
BICUBIC = v2.InterpolationMode.BICUBIC


def simclr_blur_kernel(side: int) -> int:
    """SimCLR's blur kernel for an output of ``side`` pixels: ``2·((side // 10) // 2) + 1`` (data_util.py)."""
    return 2 * ((side // 10) // 2) + 1


def pil_blur_kernel(sigma_max: float, side: int) -> int:
    """Kernel covering PIL's ``GaussianBlur(radius=σ)`` support for all σ ≤ ``sigma_max``: ``2·ceil(3σ) + 1``.

    Capped at ``2·side − 1`` because reflect padding needs a pad smaller than the image side (this only
    matters for images under 7 px).
    """
    return min(2 * math.ceil(3 * sigma_max) + 1, 2 * side - 1)


def blur(kernel: int, p: float, sigma: tuple[float, float] = BLUR_SIGMA) -> nn.Module:
    """Gaussian blur with sigma ~ U(sigma) (default U(0.1, 2)), applied with probability ``p`` (identity for a
    1-tap kernel or p = 0, so that a recipe without blur draws no random number for it)."""
    if kernel <= 1 or p == 0:
        return v2.Identity()
    return v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=p)


def solarize(p: float, threshold: int = SOLARIZE_THRESHOLD) -> nn.Module:
    """``RandomSolarize(threshold, p)``; the identity for p = 0, which then draws no random number (as ``blur``)."""
    return v2.Identity() if p == 0 else v2.RandomSolarize(threshold, p=p)


def colour_jitter(brightness: float, contrast: float, saturation: float, hue: float, p: float) -> nn.Module:
    """``RandomApply(ColorJitter(...), p)``; v2 applies the four factors in random order, like SimCLR."""
    return v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=p)


class Augment(nn.Module):
    """Shared machinery of the augment blocks: input checks, per-sample pipelines, float conversion.

    A recipe builds its uint8 pipelines in ``__init__`` (validating its parameters with the ``_check_*``
    helpers, whose errors name the block kind) and composes them in ``forward`` with :meth:`_views`.
    """

    stage = "data"
    kind = "augment"  # replaced by the registered kind (``@block`` sets it on each recipe)
    batchable = True  # whether forward goes through ``_views`` (False: a recipe with its own per-sample code)
    batched = False  # set by ``use_batched``

    def __init__(self, *, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean = self._check_triple("mean", mean)
        self.std = self._check_triple("std", std)
        if min(self.std) <= 0:
            raise self._error(f"std must be positive, got {self.std}")
        self.to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    # ----- parameter checks (ValueError naming the block kind) -----
    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.kind}: {message}")

    def _check_size(self, name: str, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._error(f"{name} must be a positive int, got {value!r}")
        return value

    def _check_count(self, name: str, value: int, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._error(f"{name} must be an int >= {minimum}, got {value!r}")
        return value

    def _check_prob(self, name: str, value: float) -> float:
        if not 0.0 <= float(value) <= 1.0:
            raise self._error(f"{name} is a probability and must lie in [0, 1], got {value!r}")
        return float(value)

    def _check_scale(self, name: str, value: Sequence[float]) -> tuple[float, float]:
        lo, hi = self._check_pair(name, value)
        if not 0.0 < lo <= hi <= 1.0:
            raise self._error(f"{name} is a crop-area range and needs 0 < low <= high <= 1, got {value!r}")
        return lo, hi

    def _check_pair(self, name: str, value: Sequence[float]) -> tuple[float, float]:
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
            raise self._error(f"{name} must be a pair of floats, got {value!r}")
        return float(value[0]), float(value[1])

    def _check_triple(self, name: str, value: Sequence[float]) -> tuple[float, float, float]:
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
            raise self._error(f"{name} must hold one float per RGB channel, got {value!r}")
        return float(value[0]), float(value[1]), float(value[2])

    # ----- batched path -----
    def use_batched(self, on: bool = True) -> bool:
        """Run the recipe batched (``on``) or per sample; returns whether it now runs batched.

        A recipe stays per sample when one of its pipelines has an op or an order the batched path cannot
        reproduce (``augment_batched.spec_of`` explains which).
        """
        self.batched = False
        if on and self.batchable:
            try:
                self._specs = {id(p): augment_batched.spec_of(p) for p in self._pipelines()}
            except ValueError:
                return False
            self.batched = bool(self._specs)
        return self.batched

    def batched_reason(self) -> str | None:
        """Why ``use_batched`` would keep this recipe per sample (None if it would not)."""
        if not self.batchable:
            return "its pipeline is not a crop followed by colour ops"
        try:
            for p in self._pipelines():
                augment_batched.spec_of(p)
        except ValueError as e:
            return str(e)
        return None

    def _pipelines(self) -> list[v2.Compose]:
        """The recipe's per-sample view pipelines (every v2.Compose held, except the float conversion)."""
        return [p for p in self.children() if isinstance(p, v2.Compose) and p is not self.to_float]

    def _padded(self, samples: Tensor | list[Tensor]) -> _Padded:
        """The samples as one uint8 batch (zero-padded to the largest size when sizes differ) with the call's
        generator, seeded by one draw of torch's global generator."""
        if isinstance(samples, Tensor):  # already one batch: no unbind/stack copy
            images, sizes = samples, torch.tensor(samples.shape[-2:]).expand(len(samples), 2)
        elif bool(((sizes := torch.tensor([x.shape[-2:] for x in samples])) == sizes[0]).all()):
            images = torch.stack(samples)
        else:
            hmax, wmax = sizes.max(0).values.tolist()
            images = samples[0].new_zeros((len(samples), 3, hmax, wmax))
            for x, out in zip(samples, images):
                out[:, :x.shape[1], :x.shape[2]] = x
        seed = int(torch.randint(0, 2 ** 62, (1,)))
        return _Padded(images, sizes[:, 0], sizes[:, 1], torch.Generator().manual_seed(seed))

    # ----- forward machinery -----
    def _samples(self, image: Tensor | Sequence[Tensor]) -> list[Tensor] | _Padded:
        """The batch as a list of uint8 ``(3, H_i, W_i)`` tensors, or as one ``_Padded`` batch on the batched
        path; ``ValueError`` for anything else."""
        if isinstance(image, Tensor):
            if image.ndim != 4:
                raise self._error(f"image must be (B, 3, H, W) or a list of (3, H, W), got shape "
                                  f"{tuple(image.shape)}")
            samples = list(image.unbind(0))
        else:
            samples = list(image)
        if not samples:
            raise self._error("image holds an empty batch")
        for x in samples:
            if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[0] != 3 or x.dtype != torch.uint8:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                dtype = x.dtype if isinstance(x, Tensor) else None
                raise self._error(f"each image must be a uint8 (3, H, W) tensor, got {shape} {dtype}")
        if self.batched:
            return self._padded(image if isinstance(image, Tensor) else samples)
        return samples

    @staticmethod
    def _apply(pipeline: nn.Module, samples: list[Tensor]) -> Tensor:
        """One independent draw of ``pipeline`` per sample: uint8 ``(B, 3, S, S)``."""
        return torch.stack([pipeline(x) for x in samples])

    def _views(self, pipelines: Sequence[nn.Module], samples: list[Tensor] | _Padded, size: int) -> Tensor:
        """Apply each pipeline to the whole batch and normalise: float32 ``(len(pipelines), B, 3, S, S)``."""
        if isinstance(samples, _Padded):
            if not pipelines:
                return torch.empty((0, len(samples), 3, size, size), dtype=torch.float32, device=samples.images.device)
            return augment_batched.run_views(samples.images, [self._specs[id(p)] for p in pipelines],
                                             samples.generator, self.mean, self.std,
                                             heights=samples.heights, widths=samples.widths)
        if not pipelines:  # e.g. DINO with local_crops 0: an empty view axis
            return torch.empty((0, len(samples), 3, size, size), dtype=torch.float32)
        return self.to_float(torch.stack([self._apply(p, samples) for p in pipelines]))


class _Padded:
    """A batch for the batched path: uint8 images (B, 3, H, W), true sizes (B,), and the call's generator."""

    def __init__(self, images: Tensor, heights: Tensor, widths: Tensor, generator: torch.Generator):
        self.images, self.heights, self.widths, self.generator = images, heights, widths, generator

    def __len__(self) -> int:
        return len(self.images)


class RepeatedViews(Augment):
    """A recipe with one pipeline drawn ``views`` times: ``(B, 3, S, S)`` for one view, else ``(V, B, 3, S, S)``.

    ``__init__`` checks what every such recipe has (``size``, ``views``, ``mean``, ``std``); the recipe then sets
    ``self.pipeline``, most of them starting with :meth:`_crop`.
    """

    def __init__(self, *, size: int, views: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__(mean=mean, std=std)
        self.size = self._check_size("size", size)
        self.views = self._check_count("views", views, 1)

    def _crop(self, scale: Sequence[float], interpolation: v2.InterpolationMode) -> v2.RandomResizedCrop:
        """RandomResizedCrop(size, ``scale``, ratio 3/4–4/3, ``interpolation``), ``scale`` checked."""
        return v2.RandomResizedCrop(self.size, scale=self._check_scale("scale", scale), ratio=RATIO,
                                    interpolation=interpolation)

    def forward(self, image: Tensor | list[Tensor]) -> Tensor:
        out = self._views([self.pipeline] * self.views, self._samples(image), self.size)
        return out[0] if self.views == 1 else out


@block("augment.simclr")
class SimCLRAugment(RepeatedViews):
    """SimCLR's augmentation (google-research/simclr · data_util.py · preprocess_for_train, batch_random_blur).

    Per sample and view: RandomResizedCrop(size, scale, ratio 3/4–4/3, bicubic) → horizontal flip p0.5 →
    ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) in random order, p0.8 → grayscale p0.2 → Gaussian blur (kernel 10 %
    of the side, see ``simclr_blur_kernel``; sigma U(0.1, 2)) with probability ``blur_prob``.
    The official code feeds [0, 1] images without mean/std; pass mean (0, 0, 0) and std (1, 1, 1) for that.

    Args:
        size: output side S (ImageNet 224, CIFAR 32; data_util.py · preprocess_for_train height/width).
        views: number of views V (2 in SimCLR; model.py splits the two views of each image).
        scale: crop-area range of RandomResizedCrop (0.08, 1) (data_util.py · crop_and_resize area_range).
        strength: colour-jitter strength s (1.0 for ImageNet, 0.5 for CIFAR; run.py · color_jitter_strength).
        blur_prob: probability of the Gaussian blur (0.5 on ImageNet, 0 on CIFAR; batch_random_blur).
        mean: per-channel normalisation mean (ImageNet mean by default).
        std: per-channel normalisation std (ImageNet std by default).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (V, B, 3, S, S) float32, or (B, 3, S, S) when views is 1.
    """

    def __init__(self, *, size: int = 224, views: int = 2, scale: tuple[float, float] = (0.08, 1.0),
                 strength: float = 1.0, blur_prob: float = 0.5,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(size=size, views=views, mean=mean, std=std)
        if not 0.0 <= strength <= 2.5:  # hue = 0.2·s must stay within ColorJitter's [0, 0.5]
            raise self._error(f"strength must lie in [0, 2.5] (hue 0.2·s <= 0.5), got {strength!r}")
        s = float(strength)
        self.pipeline = v2.Compose([
            self._crop(scale, BICUBIC),
            v2.RandomHorizontalFlip(),
            colour_jitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=0.8),
            v2.RandomGrayscale(p=0.2),
            blur(simclr_blur_kernel(self.size), self._check_prob("blur_prob", blur_prob)),
        ])


@block("augment.moco_v1")
class MoCoV1Augment(RepeatedViews):
    """MoCo v1's augmentation (facebookresearch/moco · main_moco.py, the non ``--aug-plus`` branch).

    Per sample and view, in the official order: RandomResizedCrop(size, scale, ratio 3/4–4/3, bilinear) →
    grayscale p0.2 → ColorJitter(0.4, 0.4, 0.4, 0.4) (always) → horizontal flip p0.5.

    Args:
        size: output side S (224; main_moco.py).
        views: number of views V (1: the MoCo graph calls the block twice, for query and key).
        scale: crop-area range of RandomResizedCrop (0.2, 1) (main_moco.py).
        mean: per-channel normalisation mean (ImageNet mean; main_moco.py).
        std: per-channel normalisation std (ImageNet std; main_moco.py).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (B, 3, S, S) float32, or (V, B, 3, S, S) when views > 1.
    """

    def __init__(self, *, size: int = 224, views: int = 1, scale: tuple[float, float] = (0.2, 1.0),
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(size=size, views=views, mean=mean, std=std)
        self.pipeline = v2.Compose([
            self._crop(scale, BILINEAR),
            v2.RandomGrayscale(p=0.2),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            v2.RandomHorizontalFlip(),
        ])


@block("augment.moco_v2")
class MoCoV2Augment(RepeatedViews):
    """MoCo v2's augmentation (facebookresearch/moco · main_moco.py ``--aug-plus``; moco/loader.py · GaussianBlur).

    Per sample and view: RandomResizedCrop(size, scale, ratio 3/4–4/3, bilinear) → ColorJitter(0.4, 0.4, 0.4,
    0.1) p0.8 → grayscale p0.2 → Gaussian blur sigma U(0.1, 2) p0.5 (PIL-equivalent kernel, see
    ``pil_blur_kernel``) → horizontal flip p0.5.

    Args:
        size: output side S (224; main_moco.py).
        views: number of views V (1: the MoCo graph calls the block twice, for query and key).
        scale: crop-area range of RandomResizedCrop (0.2, 1) (main_moco.py).
        mean: per-channel normalisation mean (ImageNet mean; main_moco.py).
        std: per-channel normalisation std (ImageNet std; main_moco.py).

    Inputs:
        image: uint8 (B, 3, H, W) or a list of B uint8 (3, H_i, W_i) tensors.

    Returns (B, 3, S, S) float32, or (V, B, 3, S, S) when views > 1.
    """

    def __init__(self, *, size: int = 224, views: int = 1, scale: tuple[float, float] = (0.2, 1.0),
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__(size=size, views=views, mean=mean, std=std)
        self.pipeline = v2.Compose([
            self._crop(scale, BILINEAR),
            colour_jitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            v2.RandomGrayscale(p=0.2),
            blur(pil_blur_kernel(BLUR_SIGMA[1], self.size), p=0.5),
            v2.RandomHorizontalFlip(),
        ])
