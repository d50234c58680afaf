"""Built-in blocks. Importing this package registers every block kind (see ``blocks.registry``)."""
from blocks import augment, augment_recipes, encoders, heads, masking, memory, ops, scalars, teacher, tokenizers, vit  # noqa: F401
from blocks import losses  # noqa: F401
from blocks import grounding, text, text_encoder  # noqa: F401  (vision-language; after losses: grounding uses focal)
from blocks.losses import grounding as grounding_losses  # noqa: F401
from blocks.registry import BlockRef, all_blocks, block, get  # noqa: F401
