"""Losses, one per file. Importing this package registers them."""
from blocks.losses import beit, clip, dino, dvae, focal, info_nce, jepa, mae, moco_v3, nt_xent, siglip  # noqa: F401
