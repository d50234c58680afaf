"""Datasets returning raw samples, their collation, and data specs.

Raw sample convention (every dataset returns a dict with the fields it can provide):
    image: uint8 (3, H, W); label: int (-1 when unknown); caption: str;
    boxes: float32 (n, 4) xyxy in pixels of ``image``;
    tokens_positive: per box, a list of [start, end) character spans into ``caption`` (MDETR convention).
Datasets expose ``classes: list[str]`` (empty when there are no class labels).
"""

from composer.data.captions import CaptionCSV
from composer.data.collate import collate
from composer.data.folders import CIFAR10, CIFAR100, STL10, ImageFolderDataset, read_image
from composer.data.grounding import GroundingJSON
from composer.data.shapes import ShapesDataset, example_batch
from composer.data.spec import open_dataset, parse_spec

__all__ = [
    "CIFAR10", "CIFAR100", "STL10", "CaptionCSV", "GroundingJSON", "ImageFolderDataset", "ShapesDataset",
    "collate", "example_batch", "open_dataset", "parse_spec", "read_image",
]
