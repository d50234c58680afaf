"""Image-caption pairs from a CSV file in open_clip's convention (``CsvDataset``).

A header row names the columns; one column holds image paths (relative paths are resolved against the CSV's
folder), another the caption. open_clip's flags ``--csv-img-key``, ``--csv-caption-key`` and
``--csv-separator`` correspond to ``img_key``, ``caption_key`` and ``sep`` (open_clip defaults to the
``title`` column and a tab; this project to ``filepath,caption`` with commas).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from torch.utils.data import Dataset

from composer.data.folders import read_image


class CaptionCSV(Dataset):
    """Raw samples ``{"image": uint8 (3, H, W), "label": -1, "caption": str}`` from a CSV file.

    Args:
        path: the CSV file.
        img_key: column of image paths.
        caption_key: column of captions.
        sep: column separator (one character).
    """

    classes: list[str] = []  # captions carry no class labels

    def __init__(self, path: str | os.PathLike, img_key: str = "filepath", caption_key: str = "caption",
                 sep: str = ",") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"caption CSV not found: {path}")
        if len(sep) != 1:
            raise ValueError(f"caption CSV: sep must be one character, got {sep!r}")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames or []
            missing = [key for key in (img_key, caption_key) if key not in columns]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; the header has {columns}")
            rows = [(row[img_key], row[caption_key]) for row in reader]
        if not rows:
            raise ValueError(f"{path}: no rows after the header")
        self.path = path
        self.items = [(path.parent / file, caption) for file, caption in rows]  # absolute paths stay absolute

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        file, caption = self.items[index]
        if not file.is_file():
            raise FileNotFoundError(f"{self.path} row {index + 2}: image not found: {file}")
        return {"image": read_image(file), "label": -1, "caption": caption}
