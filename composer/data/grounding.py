"""Phrase-grounding data in the MDETR / COCO convention (as GLIP reads it: ``modulated_coco.py``).

The JSON is COCO-style: ``images`` entries carry ``id``, ``file_name`` and ``caption`` (one entry per
image-caption pair), ``annotations`` carry ``image_id``, ``bbox`` as [x, y, w, h] in pixels and
``tokens_positive``, the [start, end) character spans of the caption that name the box.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from composer.data.folders import read_image


class GroundingJSON(Dataset):
    """Raw samples ``{"image", "label": -1, "caption", "boxes": (n, 4) xyxy, "tokens_positive"}``.

    Args:
        path: the annotation JSON.
        images: the folder ``file_name`` is relative to; default the JSON's folder.
    """

    classes: list[str] = []  # grounding is open-vocabulary: the caption names the boxes

    def __init__(self, path: str | os.PathLike, images: str | os.PathLike | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"grounding JSON not found: {path}")
        folder = Path(images) if images is not None else path.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"grounding images folder not found: {folder}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{path}: expected a COCO-style object with an 'images' list")
        by_image: dict = {}
        for ann in data.get("annotations", []):
            by_image.setdefault(ann["image_id"], []).append(ann)
        self.path, self.folder, self.entries = path, folder, []
        for entry in data["images"]:
            for key in ("id", "file_name", "caption"):
                if key not in entry:
                    raise ValueError(f"{path}: image entry {entry.get('id', '?')} has no {key!r}")
            anns = by_image.get(entry["id"], [])
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            spans = [[[int(s), int(e)] for s, e in a.get("tokens_positive", [])] for a in anns]
            n = len(entry["caption"])
            for ann, ann_spans in zip(anns, spans):
                if any(not 0 <= s < e <= n for s, e in ann_spans):
                    raise ValueError(f"{path}: annotation {ann.get('id', '?')} has a span outside its caption "
                                     f"(length {n}): {ann_spans}")
            self.entries.append((entry["file_name"], entry["caption"], boxes, spans))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        file_name, caption, boxes, spans = self.entries[index]
        return {
            "image": read_image(self.folder / file_name),
            "label": -1,
            "caption": caption,
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "tokens_positive": [[list(span) for span in ann] for ann in spans],
        }
