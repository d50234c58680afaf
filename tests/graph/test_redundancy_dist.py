"""Barlow Twins and VICReg on 2 gloo processes against 1 process holding the same global batch (one spawn).

Graphs: the tiny variants (small heads, `test_resnet` with non-zero residual branches) wrapped in DDP, two
iterations of forward, backward, SGD and update on fixed inputs. BatchNorm runs in eval mode so that the
encoder and head rows do not depend on how the batch is split (SyncBN is CUDA-only; see test_joint_dist.py);
the losses' own normalisation, `standardize(all_gather(.))` and VICReg's gathered variance and covariance, still
use the batch and are what this checks: the mean of the local losses equals the global loss and every DDP-averaged
parameter gradient equals the single-process gradient.

Losses alone (float64): on each rank the graph's program gives W x the rank's rows of the single-process
gradient (the gather's backward sums the W identical losses; DDP divides by W). The official forms, written with
an autograd gather like vicreg's FullGatherLayer: VICReg's equals the program rank by rank; Barlow Twins' SyncBN
statistics with the in-place all_reduce of `c` give each rank only its own rows' share, so DDP's mean is 1/W of
the gradient. lightly's `gather_distributed=True` forms: VICReg equal; Barlow Twins normalises with the local
batch statistics, which differ from the official global ones.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from dist_helpers import sgd_record
from torch.nn.parallel import DistributedDataParallel as DDP

import composer
from composer.blocks.expr.block import ExpressionOp

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
WORLD, N, SIZE, STEPS = 2, 8, 16, 2   # N per rank; global batch 16
SMALL = {"blocks.encoder.model_args": "{zero_init_last: false}"}   # every residual branch gets gradient
CASES = {
    "barlow_twins": ("barlow_twins.yaml", {**SMALL, "blocks.projector.dims": "[96, 32, 32, 8]"}),
    "vicreg": ("vicreg.yaml", {**SMALL, "blocks.expander.dims": "[96, 32, 32, 8]"}),
}


def _build(case):
    path, overrides = case
    torch.manual_seed(0)
    model = composer.build(composer.load(GRAPHS / path, overrides, "tiny"), check=False)
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    return model


def _steps(model, forward_model, rank: int | None) -> list[dict]:
    model.eval()

    def batch_at(step):
        g = torch.Generator().manual_seed(1000 + step)
        batch = {name: torch.randn(2, WORLD * N, 3, SIZE, SIZE, generator=g) for name in model.model_inputs}
        return batch if rank is None else {k: v[:, rank * N:(rank + 1) * N] for k, v in batch.items()}
    return sgd_record(model, forward_model, batch_at, STEPS, lr=0.01)   # small: eval-mode BN does not rescale


def _program(name: str) -> str:
    path, _ = CASES[name]
    return composer.load(GRAPHS / path).blocks[name].params["expr"]


class FullGather(torch.autograd.Function):
    """vicreg · main_vicreg.py · FullGatherLayer: all_gather; backward all-reduces and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.zeros_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, x)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        everything = torch.stack(grads)
        tdist.all_reduce(everything)
        return everything[tdist.get_rank()]


def _gather(x):
    return torch.cat(FullGather.apply(x), dim=0)


def official_barlow_twins_rank(z, rank: int, world: int):
    """barlowtwins · main.py · BarlowTwins.forward on one rank: SyncBN (global statistics, gradient to every
    rank's rows), c over the local rows / global batch, in-place all_reduce of c that autograd does not see."""
    def sync_bn(v):
        g = _gather(v)
        g = (g - g.mean(0)) / torch.sqrt(g.var(0, unbiased=False) + 1e-5)
        return g[rank * v.shape[0]:(rank + 1) * v.shape[0]]
    c = sync_bn(z[0]).T @ sync_bn(z[1]) / (z.shape[1] * world)
    total = c.detach().clone()
    tdist.all_reduce(total)
    c = c + (total - c.detach())
    off = c.flatten()[:-1].view(c.shape[0] - 1, c.shape[0] + 1)[:, 1:].flatten()
    return (torch.diagonal(c) - 1).pow(2).sum() + 0.0051 * off.pow(2).sum()


def _grad(fn, z):
    leaf = z.clone().requires_grad_(True)
    loss = fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad


def _loss_checks(rank: int, world: int) -> dict:
    from lightly.loss import BarlowTwinsLoss, VICRegLoss
    z = torch.randn(2, world * N, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z[1] += 0.8 * z[0]
    z[:, N:] = 3 * z[:, N:] + 1   # the ranks' halves have different statistics
    local = z[:, rank * N:(rank + 1) * N]
    out = {}
    for name in CASES:
        program = ExpressionOp(expr=_program(name))
        out[name] = _grad(lambda v: program(z=v), local)
    out["official_barlow_twins"] = _grad(lambda v: official_barlow_twins_rank(v, rank, world), local)
    out["lightly_barlow_twins"] = _grad(
        lambda v: BarlowTwinsLoss(lambda_param=0.0051, gather_distributed=True)(v[0], v[1]), local)
    out["lightly_vicreg"] = _grad(lambda v: VICRegLoss(gather_distributed=True)(v[0], v[1]), local)
    return out


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    for name, case in CASES.items():
        model = _build(case)
        torch.save(_steps(model, DDP(model, broadcast_buffers=False), rank), f"{out_dir}/{name}-rank{rank}.pt")
    torch.save(_loss_checks(rank, world_size), f"{out_dir}/losses-rank{rank}.pt")


@pytest.mark.dist
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_give_the_gradients_of_one_on_the_global_batch(two_process_runs, name):
    model = _build(CASES[name])
    reference = _steps(model, model, None)
    ranks = [torch.load(two_process_runs / f"{name}-rank{r}.pt") for r in range(WORLD)]
    for step in range(STEPS):
        ref = reference[step]
        local = torch.stack([r[step]["loss"] for r in ranks])
        assert torch.allclose(local.mean(), ref["loss"], rtol=1e-4, atol=1e-5), f"{name} step {step}: mean of local losses"
        assert set(ref["grads"]) == set(ranks[0][step]["grads"])
        for param, grad in ref["grads"].items():
            assert grad.abs().sum() > 0, f"{name}: {param} got no gradient, the comparison would be vacuous"
            for r in ranks:
                # relative to the gradient's norm, floored at 1: float32 sums run in another order on 2 processes,
                # and a few gradients are ~0 (Barlow Twins' standardize removes a shift that reaches z linearly);
                # with one intra-op thread Barlow Twins reaches 1.1e-4 by the last step; the mistakes this test is
                # after (statistics of one process's rows, see the module docstring) are errors of order 1/W
                err = (r[step]["grads"][param] - grad).norm() / max(grad.norm(), 1.0)
                assert err < 5e-4, f"{name} step {step}: {param}: error {err:.2e}"
    for key, value in reference[-1]["state"].items():
        for r in ranks:
            assert torch.allclose(r[-1]["state"][key].float(), value.float(), atol=1e-5), f"{name}: {key}"


@pytest.mark.dist
def test_losses_on_two_processes_against_official_and_lightly(two_process_runs):
    from lightly.loss import BarlowTwinsLoss, VICRegLoss
    ranks = [torch.load(two_process_runs / f"losses-rank{r}.pt") for r in range(WORLD)]
    z = torch.randn(2, WORLD * N, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z[1] += 0.8 * z[0]
    z[:, N:] = 3 * z[:, N:] + 1
    single = {name: _grad(lambda v: ExpressionOp(expr=_program(name))(z=v), z) for name in CASES}
    rows = [slice(r * N, (r + 1) * N) for r in range(WORLD)]

    def close(a, b):
        return torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    for r, got in enumerate(ranks):
        # the graphs' programs: W x this rank's rows of the single-process gradient, so DDP's mean is exact
        assert close(got["barlow_twins"][0], single["barlow_twins"][0])   # every rank: the global loss
        assert close(got["barlow_twins"][1], WORLD * single["barlow_twins"][1][:, rows[r]])
        assert close(got["vicreg"][1], WORLD * single["vicreg"][1][:, rows[r]])
        # official Barlow Twins: the same value, 1/W of the program's gradient
        assert close(got["official_barlow_twins"][0], single["barlow_twins"][0])
        assert close(got["official_barlow_twins"][1], got["barlow_twins"][1] / WORLD)
        # lightly, gathered: VICReg identical; Barlow Twins' local BatchNorm gives another loss
        assert close(got["lightly_vicreg"][0], got["vicreg"][0]) and close(got["lightly_vicreg"][1], got["vicreg"][1])
        assert abs(got["lightly_barlow_twins"][0] - got["barlow_twins"][0]) > 1e-3
    # VICReg: the invariance term is local, so the ranks' losses differ and their mean is the global loss
    assert close(sum(g["vicreg"][0] for g in ranks) / WORLD, single["vicreg"][0])
    # one process: the programs are lightly's losses (BarlowTwinsLoss with the official lambda)
    assert close(single["barlow_twins"][0], BarlowTwinsLoss(lambda_param=0.0051)(z[0], z[1]))
    assert close(single["vicreg"][0], VICRegLoss()(z[0], z[1]))
