"""Evaluation probes against hand-written references: DINO's weighted kNN as a plain loop, the linear probe on
separable and on unlearnable data, and feature extraction order, modes and gradients."""

import math

import pytest
import torch
from torch import nn

from composer.data import ShapesDataset
from composer.evaluate.probes import extract_features, knn_probe, linear_probe


def knn_loop(train_feats, train_labels, test_feats, test_labels, k, temperature):
    """DINO's weighted kNN (eval_knn.py · knn_classifier) written as plain Python loops over lists."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    train = [unit(v) for v in train_feats.tolist()]
    correct = 0
    for feat, label in zip(test_feats.tolist(), test_labels.tolist()):
        query = unit(feat)
        sims = [(sum(a * b for a, b in zip(query, t)), int(y)) for t, y in zip(train, train_labels.tolist())]
        sims.sort(key=lambda pair: -pair[0])
        votes = {}
        for sim, y in sims[:k]:
            votes[y] = votes.get(y, 0.0) + math.exp(sim / temperature)
        correct += max(votes, key=votes.get) == label
    return correct / len(test_labels)


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (20, 0.5), (200, 0.1)])
def test_knn_probe_matches_hand_loop(k, temperature):
    g = torch.Generator().manual_seed(k)
    centres = torch.randn(4, 6, generator=g)
    train_labels = torch.randint(0, 4, (40,), generator=g)
    test_labels = torch.randint(0, 4, (25,), generator=g)
    train = centres[train_labels] + 1.2 * torch.randn(40, 6, generator=g)
    test = centres[test_labels] + 1.2 * torch.randn(25, 6, generator=g)
    got = knn_probe(train, train_labels, test, test_labels, k=k, temperature=temperature, chunk=7)
    assert got == pytest.approx(knn_loop(train, train_labels, test, test_labels, k, temperature))
    assert 0.3 < got < 1.0  # neither trivial nor chance, so the comparison means something


def test_knn_votes_are_weighted_not_counted():
    # One very close neighbour of class 1 against two far ones of class 0: exp(sim/T) lets the close one win,
    # while a plain majority vote over k=3 would pick class 0.
    train = torch.tensor([[1.0, 0.05], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_probe(train, labels, test, torch.tensor([1]), k=3, temperature=0.07) == 1.0
    assert knn_probe(train, labels, test, torch.tensor([0]), k=3, temperature=100.0) == 1.0  # weights ~ equal


def test_knn_is_scale_invariant_and_validates():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(30, 5, generator=g), torch.randn(10, 5, generator=g)
    ytr, yte = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (10,), generator=g)
    assert knn_probe(train, ytr, test, yte) == knn_probe(train * 7.0, ytr, test * 0.1, yte)
    with pytest.raises(ValueError):
        knn_probe(train, ytr, test, yte, k=0)
    with pytest.raises(ValueError):
        knn_probe(train, ytr, test, yte, temperature=0.0)
    with pytest.raises(ValueError, match="unlabelled"):
        knn_probe(train, ytr, test, torch.full((10,), -1))
    with pytest.raises(ValueError, match="unlabelled"):
        linear_probe(train, ytr - 1, test, yte)


def test_linear_probe_separable_and_unlearnable():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, generator=g)
    train, test = torch.randn(300, 8, generator=g) * 5 + 3, torch.randn(100, 8, generator=g) * 5 + 3
    ytr, yte = (train @ w.T).argmax(dim=1), (test @ w.T).argmax(dim=1)  # linearly separable
    assert linear_probe(train, ytr, test, yte) >= 0.95
    shuffled = yte[torch.randperm(100, generator=g)]  # labels unrelated to the features
    assert linear_probe(train, ytr, test, shuffled) < 0.6


def test_extract_features_order_modes_and_no_grad():
    ds = ShapesDataset(n=7, size=16)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4), nn.Dropout(0.9))
    encoder.train()
    feats, labels = extract_features(encoder, ds, batch_size=3)
    assert encoder.training  # mode given back
    assert feats.shape == (7, 4) and not feats.requires_grad
    images = torch.stack([ds[i]["image"] for i in range(7)]).float() / 255
    encoder.eval()
    with torch.no_grad():
        expected = encoder(images)
    torch.testing.assert_close(feats, expected)  # eval mode (no dropout), dataset order
    assert labels.tolist() == [ds[i]["label"] for i in range(7)]


def test_extract_features_transform_variable_sizes_and_bad_output():
    class Mixed(torch.utils.data.Dataset):
        classes = []

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"image": torch.full((3, 4 + i, 5), 10 * i, dtype=torch.uint8), "label": i}

    def to_fixed(x):  # (1, 3, H, W) uint8 -> (1, 3, 2, 2) float
        return nn.functional.adaptive_avg_pool2d(x.float(), 2)

    feats, labels = extract_features(lambda x: x.mean(dim=(2, 3)), Mixed(), batch_size=2, transform=to_fixed)
    assert feats[:, 0].tolist() == [0.0, 10.0, 20.0] and labels.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        extract_features(lambda x: x, ShapesDataset(n=2, size=16))
