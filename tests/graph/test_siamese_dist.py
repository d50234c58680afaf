"""BYOL and SimSiam on 2 gloo processes against 1 process holding the same global batch (one spawn for both).

Both official codes take a per-process batch mean of a per-sample loss and average the gradients over processes
(byol_experiment.py · _update_fn: jax.lax.pmean; main_simsiam.py: DDP), which equals one process's gradient on
the global batch when BatchNorm sees the global batch (cross-replica BN, SyncBatchNorm). SyncBN has no CPU kernel
in torch, so, as for MoCo v3 in test_joint_dist.py, the tiny graphs run in eval mode: BatchNorm then uses its
running statistics and each row is independent of the split. Checked over two steps of forward, backward, SGD
and state update: the mean of the local losses equals the global loss, every parameter's DDP-averaged gradient
equals the single-process one, and the students, BYOL's target networks and BN buffers end equal.
"""
from __future__ import annotations

import pytest
import torch
from dist_helpers import sgd_record
from torch.nn.parallel import DistributedDataParallel as DDP

import composer

WORLD, N, SIZE, STEPS = 2, 4, 32, 2   # N per rank; global batch 8
NO_ZERO_INIT = {"blocks.encoder.model_args": "{zero_init_last: false}"}  # every residual branch gets gradient
CASES = {
    "byol": ("graphs/byol.yaml", NO_ZERO_INIT),
    "simsiam": ("graphs/simsiam.yaml", NO_ZERO_INIT),
}


def _build(name: str):
    path, overrides = CASES[name]
    torch.manual_seed(0)  # the same initialisation, independent BYOL target included, in every process
    model = composer.build(composer.load(path, overrides, "tiny"), check=False)
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    model.eval()
    return model


def _record(model, forward_model, rank: int | None) -> list[dict]:
    def batch_at(step):  # two views of each of the 8 images; rank r holds rows [r·N, (r+1)·N)
        g = torch.Generator().manual_seed(2000 + step)
        views = torch.randn(2, WORLD * N, 3, SIZE, SIZE, generator=g)
        return {"views": views if rank is None else views[:, rank * N:(rank + 1) * N]}
    return sgd_record(model, forward_model, batch_at, STEPS)


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    for name in CASES:
        model = _build(name)
        torch.save(_record(model, DDP(model, broadcast_buffers=False), rank), f"{out_dir}/{name}-rank{rank}.pt")


@pytest.mark.dist
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_give_the_loss_and_gradients_of_one_on_the_global_batch(name, two_process_runs):
    model = _build(name)
    assert model.model_inputs == ["views"]
    reference = _record(model, model, None)
    ranks = [torch.load(two_process_runs / f"{name}-rank{r}.pt") for r in range(WORLD)]
    for step in range(STEPS):
        ref = reference[step]
        local = torch.stack([r[step]["loss"] for r in ranks])
        assert not torch.allclose(local[0], local[1])  # the halves differ: the mean is a real check
        assert torch.allclose(local.mean(), ref["loss"], atol=1e-5), f"{name} step {step}: mean of local losses"
        assert set(ref["grads"]) == set(ranks[0][step]["grads"])
        for param, grad in ref["grads"].items():
            assert grad.abs().sum() > 0, f"{name}: {param} got no gradient, the comparison would be vacuous"
            for r in ranks:
                torch.testing.assert_close(r[step]["grads"][param], grad, rtol=1e-4, atol=1e-6,
                                           msg=f"{name} step {step}: {param}")
    state = reference[-1]["state"]
    if name == "byol":
        assert any(k.startswith("target_projector.") for k in state)
    for key, value in state.items():
        for r in ranks:
            torch.testing.assert_close(r[-1]["state"][key].float(), value.float(), rtol=1e-5, atol=1e-5,
                                       msg=f"{name}: {key}")
