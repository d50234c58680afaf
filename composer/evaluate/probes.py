"""Frozen-feature evaluation: feature extraction, weighted kNN probe (DINO) and linear probe.

All accuracies are top-1 fractions in [0, 1] (DINO prints percentages; multiply by 100 to compare).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from composer.data.collate import collate


def to_unit_float(images: Tensor) -> Tensor:
    """Default transform: uint8 (B, 3, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255)


@torch.no_grad()
def extract_features(
    encoder_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    batch_size: int = 256,
    transform: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Run a frozen encoder over a dataset of raw samples, in order.

    Args:
        encoder_fn: maps a float batch (B, 3, H, W) to features (B, D). An ``nn.Module`` is put in eval mode
            for the pass and given back in the mode it had.
        dataset: a dataset of raw sample dicts (``image`` uint8 (3, H, W), ``label``).
        batch_size: images per forward pass.
        transform: maps the uint8 image batch (B, 3, H, W) to the encoder input; default ``to_unit_float``.
            When image sizes differ within a batch it is applied to each image (1, 3, H_i, W_i) and the results
            concatenated, so it must then bring them to one size.
        device: where the encoder runs; default the device of a module's first parameter, else CPU.
        num_workers: DataLoader worker processes decoding samples.

    Returns:
        features: (N, D) float32 on CPU; labels: (N,) int64 on CPU (-1 where unknown).
    """
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    transform = transform or to_unit_float
    if device is None:
        params = list(encoder_fn.parameters()) if isinstance(encoder_fn, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    was_training = isinstance(encoder_fn, nn.Module) and encoder_fn.training
    if isinstance(encoder_fn, nn.Module):
        encoder_fn.eval()
    feats, labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate):
            images = batch["image"]
            if isinstance(images, Tensor):
                inputs = transform(images)
            else:
                inputs = torch.cat([transform(img[None]) for img in images])
            out = encoder_fn(inputs.to(device))
            if not isinstance(out, Tensor) or out.ndim != 2:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"extract_features: encoder_fn must return (B, D) features, got {shape}")
            feats.append(out.float().cpu())
            labels.append(batch.get("label", torch.full((len(out),), -1, dtype=torch.long)))
    finally:
        if was_training:
            encoder_fn.train()
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def _check_labels(probe: str, *labels: Tensor) -> None:
    if any(len(y) and int(y.min()) < 0 for y in labels):
        raise ValueError(f"{probe}: labels must be class indices >= 0; -1 marks unlabelled data")


def knn_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted k-nearest-neighbour top-1 accuracy, as DINO evaluates (facebookresearch/dino · eval_knn.py ·
    knn_classifier, with k=20 and T=0.07 its recommended values).

    Features are L2-normalised; each test point takes its k most cosine-similar training points, each neighbour
    votes for its label with weight exp(sim / T), and the class with the largest summed vote is the prediction.
    k is capped at the number of training points.

    Args:
        train_feats: (N, D); train_labels: (N,) int in [0, C).
        test_feats: (M, D); test_labels: (M,) int.
        k: neighbours per test point (DINO reports 10, 20, 100, 200; 20 works best there).
        temperature: T of the vote weights (DINO: 0.07).
        chunk: test points per similarity block (bounds memory to chunk x N).
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_probe: need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if len(train_feats) == 0 or len(test_feats) == 0:
        raise ValueError("knn_probe: empty train or test features")
    _check_labels("knn_probe", train_labels, test_labels)
    train = nn.functional.normalize(train_feats.float(), dim=1)
    test = nn.functional.normalize(test_feats.float(), dim=1)
    train_labels, test_labels = train_labels.long(), test_labels.long()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk):
        sim = test[start:start + chunk] @ train.T                            # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)                                # (m, k)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_labels[start:start + chunk]).sum())
    return correct / len(test)


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 100,
) -> float:
    """Top-1 accuracy of a linear (softmax) classifier on frozen, standardised features.

    Features are standardised with the training mean and std; the classifier is fitted full-batch with L-BFGS
    on cross-entropy plus ``weight_decay/2 * ||W||^2`` (a multinomial logistic regression, deterministic).

    Args:
        train_feats: (N, D); train_labels: (N,) int in [0, C).
        test_feats: (M, D); test_labels: (M,) int.
        weight_decay: L2 penalty on the weights (not the bias).
        max_iter: L-BFGS iterations.
    """
    if weight_decay < 0 or max_iter < 1:
        raise ValueError(f"linear_probe: need weight_decay >= 0 and max_iter >= 1, got {weight_decay}, {max_iter}")
    _check_labels("linear_probe", train_labels, test_labels)
    train, test = train_feats.float(), test_feats.float()
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    train_labels, test_labels = train_labels.long(), test_labels.long()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    layer = nn.Linear(train.shape[1], num_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(layer(train), train_labels)
        loss = loss + 0.5 * weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float((layer(test).argmax(dim=1) == test_labels).float().mean())
