"""Two gloo processes with half of a fixed global batch each equal one process with the whole batch.

For every loss that talks to other processes (nt_xent, moco_v3, clip, siglip, token_focal) a tiny linear
"encoder" maps a fixed global batch to the loss's inputs. Each rank runs its half and back-propagates its local
loss; the parameter gradients are then averaged over ranks exactly as DDP does (all-reduce sum / W). The mean of
the two local losses and the averaged gradients must equal the loss and gradients of one process on the whole
batch. One spawn runs every case.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist
from torch import nn

from composer.blocks.losses.clip import CLIPLoss
from composer.blocks.losses.focal import TokenSigmoidFocalLoss
from composer.blocks.losses.moco_v3 import MoCoV3Loss
from composer.blocks.losses.nt_xent import NTXent
from composer.blocks.losses.siglip import SigLIPLoss
from composer.blocks.scalars import Scalar
from composer.runtime import collectives

WORLD = 2
G = 8  # global batch (images, pairs or grounding samples: 4)


def _linear(gen: torch.Generator, i: int, o: int) -> nn.Linear:
    layer = nn.Linear(i, o)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(o, i, generator=gen))
        layer.bias.copy_(torch.randn(o, generator=gen) * 0.1)
    return layer


def _build(name: str):
    """Deterministic modules, global data and global batch size for one case (the same in every process)."""
    gen = torch.Generator().manual_seed(sorted(CASES).index(name))
    if name in ("nt_xent", "moco_v3"):
        mods = nn.ModuleDict({"enc": _linear(gen, 5, 4)})
        if name == "moco_v3":
            mods["key_enc"] = _linear(gen, 5, 4).requires_grad_(False)
        return mods, {"views": torch.randn(2, G, 5, generator=gen)}, G
    if name.startswith(("clip", "siglip")):
        log_scale = 2.659260 if name == "clip" else 2.302585
        mods = nn.ModuleDict({"img": _linear(gen, 5, 4), "txt": _linear(gen, 6, 4),
                              "scale": Scalar(init=log_scale), "bias": Scalar(init=-2.71)})
        return mods, {"image": torch.randn(G, 5, generator=gen), "text": torch.randn(G, 6, generator=gen)}, G
    # token_focal: 4 grounding samples, 5 anchors, 6 token positions
    mods = nn.ModuleDict({"head": _linear(gen, 3, 6)})
    positive = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    targets = torch.zeros(4, 5, 6)
    targets[positive] = torch.tensor([1.0, 1, 0, 0, 0, 0])
    targets[~positive] = torch.tensor([0.0, 0, 0, 0, 0, 1])
    text_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    return mods, {"feats": torch.randn(4, 5, 3, generator=gen), "targets": targets, "text_mask": text_mask,
                  "positive": positive}, 4


def _moco_v3(m, d, s):
    x = d["views"][:, s]
    with torch.no_grad():
        key = m["key_enc"](x)
    return MoCoV3Loss(temperature=0.2)(m["enc"](x), key)


def _siglip(chunk_size):
    def run(m, d, s):
        return SigLIPLoss(chunk_size=chunk_size)(m["img"](d["image"][s]), m["txt"](d["text"][s]), m["scale"](),
                                                 m["bias"]())
    return run


CASES = {
    "nt_xent": lambda m, d, s: NTXent(temperature=0.5)(m["enc"](d["views"][:, s])),
    "moco_v3": _moco_v3,
    "clip": lambda m, d, s: CLIPLoss()(m["img"](d["image"][s]), m["txt"](d["text"][s]), m["scale"](), m["bias"]()),
    "siglip": _siglip(None),
    "siglip_chunk3": _siglip(3),  # chunks straddle the two ranks' text blocks
    "token_focal": lambda m, d, s: TokenSigmoidFocalLoss()(m["head"](d["feats"][s]), d["targets"][s],
                                                           d["text_mask"][s], d["positive"][s]),
}


def _run(name: str, rank: int, world: int):
    mods, data, n = _build(name)
    per_rank = n // world
    loss = CASES[name](mods, data, slice(rank * per_rank, (rank + 1) * per_rank))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in mods.named_parameters() if p.requires_grad}
    return loss.detach().clone(), grads


def _worker(rank: int, world: int, out: str) -> None:
    results = {"world_size": collectives.world_size()}
    for name in CASES:
        loss, grads = _run(name, rank, world)
        local = loss.clone()
        tdist.all_reduce(loss)  # mean of the local losses
        for g in grads.values():  # DDP: all-reduce sum, divide by the world size
            tdist.all_reduce(g)
            g /= world
        results[name] = {"loss": loss / world, "local": local, "grads": grads}
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.fixture(scope="module")
def two_process_results(two_process_runs):  # two_process_runs (tests/conftest.py) runs _worker once
    return [torch.load(two_process_runs / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.dist
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one(two_process_results, name):
    want_loss, want_grads = _run(name, rank=0, world=1)  # this process is not distributed: the whole batch
    for r, res in enumerate(two_process_results):
        assert res["world_size"] == WORLD
        got = res[name]
        assert got["loss"].item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-7), f"rank {r}"
        assert set(got["grads"]) == set(want_grads)
        for k, g in got["grads"].items():
            torch.testing.assert_close(g, want_grads[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} {k}: {m}")
    # the halves really differ (the check is not vacuous)
    assert two_process_results[0][name]["local"].item() != two_process_results[1][name]["local"].item()
