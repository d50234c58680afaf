"""Collate raw samples (the dicts every dataset returns) into one batch dict with the same keys."""

from __future__ import annotations

import torch

# How each field of the raw sample convention is batched; a field no sample has is absent from the batch.
_FIELDS = ("image", "encoded", "label", "caption", "boxes", "tokens_positive")


def collate(samples: list[dict]) -> dict:
    """Batch raw samples.

    Returns a dict with, for each field the samples carry:
        image: (B, 3, H, W) uint8 when all images share a size, else the list of (3, H_i, W_i) tensors;
        label: (B,) int64;
        caption: list of B str;
        boxes: list of B float32 (n_i, 4) tensors (box counts differ between samples);
        tokens_positive: list of B lists (per box, a list of [start, end) spans);
        encoded: list of B uint8 (N_i,) tensors, the undecoded image files (``folder:PATH,decode=device``).

    Raises:
        ValueError: on an empty batch, an unknown field, or a field present in some samples only.
    """
    if not samples:
        raise ValueError("collate: empty batch")
    keys = set(samples[0])
    for i, sample in enumerate(samples):
        if set(sample) != keys:
            raise ValueError(f"collate: sample {i} has fields {sorted(sample)}, sample 0 has {sorted(keys)}")
    unknown = keys.difference(_FIELDS)
    if unknown:
        raise ValueError(f"collate: unknown fields {sorted(unknown)}; expected some of {list(_FIELDS)}")
    batch: dict = {}
    if "image" in keys:
        images = [s["image"] for s in samples]
        same = all(img.shape == images[0].shape for img in images)
        batch["image"] = torch.stack(images) if same else images
    if "label" in keys:
        batch["label"] = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
    for key in ("caption", "boxes", "tokens_positive", "encoded"):
        if key in keys:
            batch[key] = [s[key] for s in samples]
    return batch
