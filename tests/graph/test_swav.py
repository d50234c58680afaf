"""SwAV (graphs/swav.yaml) against facebookresearch/swav and lightly 1.6.0.

- the graph's ``loss.expr`` program equals lightly's ``SwaVLoss`` and the loss of main_swav.py · train written out
  below (with its ``distributed_sinkhorn``), in value and gradient, in float64;
- two gloo processes give the loss and parameter gradients of one process on the global batch (the Sinkhorn
  marginals are summed over ranks), and the ``sinkhorn`` op on two ranks equals lightly's gathered Sinkhorn;
- the prototypes: rows renormalised before every forward and no update during ``freeze_prototypes_niters``,
  stepped with apex ``LARC(SGD)`` written out below, iteration by iteration;
- the optimizer: one group with every parameter, LARC's trust ratio, weight decay 1e-6; the lr schedule of
  main_swav.py (linear warm-up from start_warmup, then cosine to final_lr).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from dist_helpers import sgd_record, spawn
from torch.nn.parallel import DistributedDataParallel as DDP

import composer
from composer.blocks.expr.block import ExpressionLoss
from composer.blocks.expr.ops import sinkhorn as sinkhorn_op
from composer.graph.shapes import example_batch
from composer.graph.train_section import parse_train
from composer.train.optim import build_optimizer, freeze_gradients, set_hyperparameters

GRAPH = Path(__file__).resolve().parents[2] / "graphs" / "swav.yaml"
SMALL = {  # the tiny variant, smaller still; the ResNet's residual branches non-zero so every layer has gradient
    "blocks.encoder.model_args": "{zero_init_last: false}",
    "blocks.projector.dims": "[96, 32, 16]",
    "blocks.prototypes.in_dim": 16,
    "blocks.prototypes.out_dim": 10,
}
WORLD, N = 2, 4  # N images per rank


# -- the official code, written out -------------------------------------------------------------------------
def official_sinkhorn(out, epsilon=0.05, iterations=3, world=1, all_reduce=lambda x: None):
    """main_swav.py · distributed_sinkhorn: codes (B, K) of scores (B, K); ``all_reduce`` sums in place."""
    Q = torch.exp(out / epsilon).t()
    B, K = Q.shape[1] * world, Q.shape[0]
    total = torch.sum(Q)
    all_reduce(total)
    Q /= total
    for _ in range(iterations):
        rows = torch.sum(Q, dim=1, keepdim=True)
        all_reduce(rows)
        Q /= rows
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def official_swav_loss(output, bs, n_crops, crops_for_assign=(0, 1), temperature=0.1):
    """main_swav.py · train: ``output`` (n_crops·bs, K), crops concatenated in order, the 224 crops first."""
    loss = 0
    for crop_id in crops_for_assign:
        with torch.no_grad():
            q = official_sinkhorn(output[bs * crop_id:bs * (crop_id + 1)].detach())[-bs:]
        subloss = 0
        for v in np.delete(np.arange(n_crops), crop_id):
            x = output[bs * v:bs * (v + 1)] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (n_crops - 1)
    return loss / len(crops_for_assign)


def larc_sgd_step(params, lr, wd, momentum=0.9, trust=0.001, eps=1e-8, buffers=None):
    """apex · LARC(SGD(momentum, wd), trust_coefficient, clip=False).step: wd folded in before the trust ratio,
    the SGD itself without decay; torch SGD's momentum buffer (the first step copies d)."""
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            w_norm, g_norm = torch.norm(p), torch.norm(p.grad)
            if w_norm != 0 and g_norm != 0:
                rate = trust * w_norm / (g_norm + w_norm * wd + eps)
                p.grad += wd * p
                p.grad *= rate
            buf = buffers.get(p)
            buffers[p] = p.grad.clone() if buf is None else buf.mul_(momentum).add_(p.grad)
            p.sub_(lr * buffers[p])


def _program() -> ExpressionLoss:
    spec = composer.load(GRAPH)
    return ExpressionLoss(expr=spec.blocks["swav_loss"].params["expr"])


# -- (a) the loss ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("local_crops", [6, 2, 0])
def test_the_graph_loss_is_lightly_swav_loss_and_the_official_formula(local_crops):
    from lightly.loss import SwaVLoss
    gen = torch.Generator().manual_seed(local_crops)
    s = (torch.randn(2 + local_crops, 5, 7, generator=gen, dtype=torch.float64) / 2).requires_grad_(True)
    ours = _program()._evaluate({"s": s})  # float64 throughout (the loss block itself computes in float32)
    (g_ours,) = torch.autograd.grad(ours, s)
    t = s.detach().clone().requires_grad_(True)
    theirs = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(list(t[:2]), list(t[2:]))
    (g_theirs,) = torch.autograd.grad(theirs.sum(), t)
    u = s.detach().clone().requires_grad_(True)
    official = official_swav_loss(u.reshape(-1, 7), 5, 2 + local_crops)
    (g_official,) = torch.autograd.grad(official, u)
    assert ours.dtype == torch.float64 and ours.ndim == 0
    torch.testing.assert_close(ours, theirs.reshape(()), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_ours, g_official, rtol=1e-9, atol=1e-12)
    assert g_ours.abs().sum() > 0


def test_sinkhorn_codes_are_the_official_ones_and_carry_no_gradient():
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    q = sinkhorn_op(scores, eps=0.05, iters=3)
    assert not q.requires_grad
    torch.testing.assert_close(q, official_sinkhorn(scores.detach()), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6, dtype=torch.float64))  # each sample: a distribution
    # float32 scores keep float32 codes; half precision scores are lifted to float32 (exp(s / 0.05) overflows)
    assert sinkhorn_op(scores.detach().half(), eps=0.05, iters=3).dtype == torch.float32


# -- (b) two processes -------------------------------------------------------------------------------------
def _build(overrides=SMALL):
    torch.manual_seed(0)
    model = composer.build(composer.load(GRAPH, overrides, "tiny"), check=False)
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    return model


def _global_views(step: int):
    """The data stage's crops of a fixed global batch of WORLD·N images (a NamedTuple of (V, G, 3, S, S))."""
    model = _build()
    torch.manual_seed(100 + step)
    return model.data_stage(example_batch(model.spec, n=WORLD * N))["views"]


def _rows(views, rank):
    rows = slice(rank * N, (rank + 1) * N)
    return type(views)(*(v[:, rows] for v in views))


def _dist_worker(rank: int, world: int, out_dir: str, batches: list, scores: torch.Tensor) -> None:
    torch.set_num_threads(1)
    # the op alone: this rank's rows of the global codes, as lightly's sinkhorn with gather_distributed
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn
    local = scores[rank * 3:(rank + 1) * 3]
    ours = sinkhorn_op(local, eps=0.05, iters=3)
    torch.testing.assert_close(ours, lightly_sinkhorn(local.clone(), 3, 0.05, gather_distributed=True))
    torch.save(ours, f"{out_dir}/codes-rank{rank}.pt")
    # the graph: BatchNorm on running statistics (eval) so every row is independent of the split; the
    # Sinkhorn marginals are the only coupling between the ranks' halves
    model = _build()
    model.eval()
    record = sgd_record(model, DDP(model, broadcast_buffers=False),
                        lambda step: {"views": _rows(batches[step], rank)}, len(batches))
    torch.save(record, f"{out_dir}/graph-rank{rank}.pt")


@pytest.mark.dist
def test_two_processes_give_the_loss_and_gradients_of_one_on_the_global_batch(tmp_path):
    gen = torch.Generator().manual_seed(9)
    scores = torch.randn(2 * 3, 5, generator=gen) / 2
    batches = [_global_views(step) for step in range(2)]
    spawn(_dist_worker, WORLD, str(tmp_path), batches, scores)
    codes = torch.cat([torch.load(tmp_path / f"codes-rank{r}.pt") for r in range(WORLD)])
    torch.testing.assert_close(codes, official_sinkhorn(scores.double()).float(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(codes[:3], official_sinkhorn(scores[:3].double()).float(), atol=1e-3)  # coupled

    model = _build()
    model.eval()
    reference = sgd_record(model, model, lambda step: {"views": batches[step]}, len(batches))
    ranks = [torch.load(tmp_path / f"graph-rank{r}.pt") for r in range(WORLD)]
    for step in range(len(batches)):
        ref = reference[step]
        mean_loss = torch.stack([r[step]["loss"] for r in ranks]).mean()
        torch.testing.assert_close(mean_loss, ref["loss"], rtol=1e-5, atol=1e-6)
        for name, grad in ref["grads"].items():
            assert grad.abs().sum() > 0, f"{name} got no gradient: the comparison would be vacuous"
            for r in ranks:
                torch.testing.assert_close(r[step]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for key, value in reference[-1]["state"].items():  # weights and renormalised prototypes after 2 steps
        for r in ranks:
            torch.testing.assert_close(r[-1]["state"][key].float(), value.float(), atol=1e-5, rtol=1e-4)


# -- (c) prototypes: normalisation and freezing; (d) LARC -----------------------------------------------------
def test_prototypes_follow_main_swav_train_iteration_by_iteration():
    """Ours: forward, backward, freeze, LARS(larc) step, update (renormalise). Official: renormalise, forward,
    backward, ``p.grad = None`` for the prototypes while ``iteration < freeze_prototypes_niters``, LARC(SGD)."""
    freeze, steps, lr, wd = 2, 4, 0.5, 1e-6
    model = _build({**SMALL, "train.freeze": "{prototypes: 2}", "train.lr": lr})
    # eval: BatchNorm on running statistics, so the projector's first bias (before a BN) has a real gradient;
    # in train mode it is zero up to rounding, and LARC's trust ratio would blow the rounding up
    model.eval()
    official = copy.deepcopy(model)
    cfg = parse_train(model.spec)
    assert cfg.freeze["prototypes"].steps(5) == freeze
    optimizer = build_optimizer(model, cfg)
    buffers = {}
    views = _global_views(0)
    proto = official.prototypes.linear.weight
    for it in range(steps):
        with torch.no_grad():  # main_swav.py · train: normalize the prototypes
            proto.copy_(F.normalize(proto.clone(), dim=1, p=2))
        for (name, ours), theirs in zip(model.named_parameters(), official.parameters()):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7, msg=f"iteration {it}: {name}")
        torch.testing.assert_close(model.prototypes.linear.weight.norm(dim=1), torch.ones(10))
        before = proto.detach().clone()

        official({"views": views}).loss.backward()
        if it < freeze:
            proto.grad = None
        larc_sgd_step(list(official.parameters()), lr, wd, buffers=buffers)
        official.zero_grad(set_to_none=True)

        set_hyperparameters(optimizer, lr, wd)
        out = model({"views": views})
        out.loss.backward()
        if it < cfg.freeze["prototypes"].steps(5):
            assert freeze_gradients(optimizer, list(cfg.freeze)) == 1  # prototypes.linear.weight only
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update(out, it)
        assert torch.equal(proto, before) == (it < freeze)


def test_the_optimizer_is_larc_over_every_parameter_with_decay():
    model = _build()
    cfg = parse_train(composer.load(GRAPH))
    assert cfg.optimizer == "lars" and cfg.optimizer_args["larc"] and not cfg.optimizer_args["lr_in_momentum"]
    assert cfg.weight_decay.at(0) == 1e-6 and cfg.no_weight_decay == [] and cfg.lr_scaling == "none"
    optimizer = build_optimizer(model, cfg)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lars_adapt"] and group["decay"] and group["momentum"] == 0.9
    assert group["trust_coefficient"] == 0.001
    assert len(group["params"]) == len(list(model.parameters()))  # BN and biases adapted and decayed too
    # one step against apex LARC, with a zero parameter (LARC leaves its raw gradient, without decay)
    with torch.no_grad():
        model.projector.net[0].bias.zero_()
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(3)
    for p, r in zip(model.parameters(), reference.parameters()):
        p.grad = torch.randn(p.shape, generator=gen)
        r.grad = p.grad.clone()
    before = [p.detach().clone() for p in model.parameters()]
    set_hyperparameters(optimizer, 4.8, 1e-6)
    optimizer.step()
    larc_sgd_step(list(reference.parameters()), 4.8, 1e-6, buffers={})
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8, msg=name)
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_the_lr_is_main_swav_warm_up_then_cosine():
    """main_swav.py · main: np.linspace(start_warmup, base_lr, warm-up iterations), then
    final + (base − final)/2 · (1 + cos(π t / cosine iterations)). The warm-up here ends one step short of the
    linspace's closing value (a ramp of step/warm-up); the cosine part is exact."""
    cfg = parse_train(composer.load(GRAPH))
    ipe, epochs, warm = 7, 800, 10
    cfg.lr.bind(ipe * epochs, ipe)
    warmup = np.linspace(0.3, 4.8, ipe * warm)
    t = np.arange(ipe * (epochs - warm))
    cosine = 0.0048 + 0.5 * (4.8 - 0.0048) * (1 + np.cos(np.pi * t / len(t)))
    official = np.concatenate((warmup, cosine))
    ours = np.array([cfg.lr.at(step) for step in range(ipe * epochs)])
    assert ours[0] == pytest.approx(0.3) and cfg.batch_size == 4096 and cfg.epochs == 800
    np.testing.assert_allclose(ours[ipe * warm:], official[ipe * warm:], rtol=1e-12)
    step_size = (4.8 - 0.3) / (ipe * warm - 1)
    assert np.abs(ours[:ipe * warm] - official[:ipe * warm]).max() <= step_size + 1e-12
    assert math.isclose(cfg.freeze["prototypes"].steps(ipe), 313)
