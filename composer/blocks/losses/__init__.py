"""Losses, one per file. Importing this package registers them."""
from composer.blocks.losses import (  # noqa: F401
    beit,
    clip,
    dino,
    dvae,
    focal,
    grounding,
    info_nce,
    jepa,
    mae,
    moco_v3,
    nt_xent,
    siglip,
)
