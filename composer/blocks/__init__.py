"""Built-in blocks. Importing this package registers every block kind (see ``composer.blocks.registry``)."""
from composer.blocks import (  # noqa: F401  (importing a module registers its blocks)
    expr,
    augment,
    augment_recipes,
    augment_views,
    encoders,
    grounding,
    heads,
    losses,
    masking,
    memory,
    ops,
    scalars,
    teacher,
    text,
    text_encoder,
    text_tokenizers,
    tokenizers,
    vit,
)
from composer.blocks.registry import BlockRef, all_blocks, block, get  # noqa: F401
