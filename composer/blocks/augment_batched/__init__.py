"""Batched augmentations: the augment blocks' per-sample v2 pipelines run as batch operations with
per-sample random parameters, on CPU or an accelerator (``Augment.batched``; ``ptc train --augment device``).

- ``params``: ``ViewSpec`` (one view in torchvision's terms), ``sample_view`` (torchvision's distributions);
- ``ops``: crop + resize, flip, colour jitter, grayscale, blur, solarize, normalise on ``(B, C, H, W)``;
- ``views``: ``spec_of`` (a v2 pipeline → ``ViewSpec``) and ``run_views`` (a batch → ``(V, B, 3, S, S)``).
"""
from composer.blocks.augment_batched.params import ViewParams, ViewSpec, sample_view  # noqa: F401
from composer.blocks.augment_batched.views import apply_view, run_views, spec_of  # noqa: F401
