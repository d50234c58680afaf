"""Joint-embedding graphs on 2 gloo processes against 1 process holding the same global batch.

One spawn serves the whole file (a module fixture); each rank runs the three checks below on its half of fixed
global batches and saves what the parent compares with its own single-process run.

Exact comparisons need batch-split-invariant forwards, and without SyncBN (train.sync_bn is CUDA-only on
purpose: torch's SyncBatchNorm has no CPU kernel) BatchNorm in train mode normalises each rank's half with its
own statistics. So:
- SimCLR uses a BatchNorm-free override of its tiny variant (LayerNorm ViT `test_vit`, projector with
  `hidden_norm=none, last_norm=none`) in train mode: this checks NT-Xent's gather-with-gradient under DDP.
- MoCo v3 keeps the tiny variant's BatchNorm projector and predictor (hidden and last BN) and a BatchNorm ResNet
  (`test_resnet`, for speed), all in eval mode: BN then uses running statistics, so every row is independent
  of the split. This checks the key gather, the rank-offset labels and the EMA teacher staying in step.
- MoCo v2 runs in train mode with BatchNorm on purpose: its key encoder is `teacher.ema_shuffled`, and its keys
  must be those of builder.py's shuffle-BN (gather, permute with rank 0's permutation, encode each rank's slice
  with that slice's batch statistics, gather, un-permute), and its queue must stay identical on both ranks.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as tdist
from dist_helpers import sgd_record
from torch.nn.parallel import DistributedDataParallel as DDP

import composer

WORLD, N, SIZE, STEPS = 2, 4, 32, 2   # N per rank; global batch G = 8

SIMCLR = ("graphs/simclr.yaml", {
    "blocks.encoder.arch": "test_vit",
    "blocks.encoder.model_args": "{img_size: 32, patch_size: 8, depth: 1}",
    "blocks.projector.dims": "[64, 64, 16]",
    "blocks.projector.hidden_norm": "none",
    "blocks.projector.last_norm": "none",
})
MOCO_V3 = ("graphs/moco_v3.yaml", {
    "blocks.encoder.arch": "test_resnet",
    "blocks.encoder.model_args": "{zero_init_last: false}",  # non-zero residual branches: every layer has gradient
    "blocks.projector.dims": "[96, 64, 32]",
    "blocks.predictor.dims": "[32, 64, 32]",
})
MOCO_V2 = ("graphs/moco_v2.yaml", {
    "blocks.encoder.arch": "test_resnet",
    "blocks.projector.dims": "[96, 64, 32]",
    "blocks.queue.size": 16,
    "blocks.queue.dim": 32,
})


def _build(case):
    path, overrides = case
    torch.manual_seed(0)  # the same initialisation (and MoCo queue) in every process
    model = composer.build(composer.load(path, overrides, "tiny"), check=False)
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    return model


def _global_batch(names: list[str], views: int | None, step: int) -> dict[str, torch.Tensor]:
    """Fixed inputs of the model stage for the whole global batch: (views, G, 3, S, S) or (G, 3, S, S)."""
    g = torch.Generator().manual_seed(1000 + step)
    shape = ((views,) if views else ()) + (WORLD * N, 3, SIZE, SIZE)
    return {name: torch.randn(shape, generator=g) for name in names}


def _slice(batch: dict, rank: int, views: int | None) -> dict:
    rows = slice(rank * N, (rank + 1) * N)
    return {k: (v[:, rows] if views else v[rows]) for k, v in batch.items()}


def _gradient_steps(model, forward_model, rank: int | None, eval_mode: bool) -> list[dict]:
    """STEPS iterations of forward, backward, SGD step and state update; each iteration's loss and gradients.

    ``rank`` None: one process on the whole batch; else this rank's half."""
    model.eval() if eval_mode else model.train()

    def batch_at(step):  # two views of every image
        batch = _global_batch(model.model_inputs, 2, step)
        return batch if rank is None else _slice(batch, rank, 2)
    return sgd_record(model, forward_model, batch_at, STEPS)


def _ddp(model):
    return DDP(model, broadcast_buffers=False)


def _check_moco_v2_queue_and_shuffle_bn(rank: int) -> list[int]:
    """Three steps of MoCo v2 on different local batches: shuffle-BN keys and identical queues on both ranks."""
    model = _build(MOCO_V2)
    model.train()
    ddp = _ddp(model)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    pointers = []
    for step in range(3):
        batch = _global_batch(["x_q", "x_k"], None, step)
        teacher = copy.deepcopy(model.key_encoder.module)  # the key encoder as this forward will see it
        torch.manual_seed(77 + step)  # every rank: the permutation rank 0 draws is then torch.randperm(G) here
        out = ddp(_slice(batch, rank, None))
        torch.manual_seed(77 + step)
        order = torch.randperm(WORLD * N)
        # builder.py · _batch_shuffle_ddp / _batch_unshuffle_ddp by hand on the whole global batch: each rank
        # slice of the permuted batch is normalised with its own BatchNorm statistics, then un-permuted
        with torch.no_grad():
            parts = [teacher(batch["x_k"][idx]) for idx in order.view(WORLD, -1)]
            expected = torch.cat(parts)[torch.argsort(order)][rank * N:(rank + 1) * N]
            unshuffled = teacher(batch["x_k"][rank * N:(rank + 1) * N])
        keys = out.values["k__key_encoder"]
        assert torch.allclose(keys, expected, atol=1e-5), f"shuffle-BN keys, step {step}"
        assert not torch.allclose(keys, unshuffled, atol=1e-3)  # the shuffle changed the BN statistics
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ptr = int(model.queue.ptr)
        model.update(out, step)
        # the keys of both ranks, in rank order, written at the old pointer; the same queue on every rank
        written = [torch.empty(N, 32) for _ in range(WORLD)]
        tdist.all_gather(written, out.updates["queue"]["keys"].contiguous())
        assert torch.equal(model.queue.queue[ptr:ptr + WORLD * N], torch.cat(written))
        queues = [torch.empty_like(model.queue.queue) for _ in range(WORLD)]
        tdist.all_gather(queues, model.queue.queue)
        ptrs = [torch.empty_like(model.queue.ptr) for _ in range(WORLD)]
        tdist.all_gather(ptrs, model.queue.ptr)
        assert torch.equal(queues[0], queues[1]) and int(ptrs[0]) == int(ptrs[1])
        pointers.append(int(model.queue.ptr))
    assert pointers == [8, 0, 8]  # K=16, G=8, as builder.py · _dequeue_and_enqueue
    params = [torch.cat([p.detach().flatten() for p in model.parameters()])]
    others = [torch.empty_like(params[0]) for _ in range(WORLD)]
    tdist.all_gather(others, params[0])
    assert torch.equal(others[0], others[1])  # DDP kept the students (and so the EMA teachers) in step
    return pointers


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    for name, case, eval_mode in (("simclr", SIMCLR, False), ("moco_v3", MOCO_V3, True)):
        model = _build(case)
        torch.save(_gradient_steps(model, _ddp(model), rank, eval_mode), f"{out_dir}/{name}-rank{rank}.pt")
    torch.save(_check_moco_v2_queue_and_shuffle_bn(rank), f"{out_dir}/moco_v2-rank{rank}.pt")


def _compare(name: str, case, eval_mode: bool, out_dir) -> None:
    model = _build(case)
    reference = _gradient_steps(model, model, None, eval_mode)
    ranks = [torch.load(out_dir / f"{name}-rank{r}.pt") for r in range(WORLD)]
    for step in range(STEPS):
        ref = reference[step]
        local = torch.stack([r[step]["loss"] for r in ranks])
        assert torch.allclose(local.mean(), ref["loss"], atol=1e-5), f"{name} step {step}: mean of local losses"
        assert set(ref["grads"]) == set(ranks[0][step]["grads"])
        for param, grad in ref["grads"].items():
            assert grad.abs().sum() > 0, f"{name}: {param} got no gradient, the comparison would be vacuous"
            for r in ranks:
                assert torch.allclose(r[step]["grads"][param], grad, rtol=1e-4, atol=1e-6), \
                    f"{name} step {step}: {param}"
    for key, value in reference[-1]["state"].items():  # students, EMA teachers (and BN buffers) after 2 steps
        for r in ranks:
            assert torch.allclose(r[-1]["state"][key].float(), value.float(), atol=1e-5), f"{name}: {key}"


@pytest.mark.dist
def test_simclr_two_processes_give_the_gradients_of_one_on_the_global_batch(two_process_runs):
    _compare("simclr", SIMCLR, False, two_process_runs)


@pytest.mark.dist
def test_moco_v3_two_processes_give_the_gradients_of_one_on_the_global_batch(two_process_runs):
    _compare("moco_v3", MOCO_V3, True, two_process_runs)


@pytest.mark.dist
def test_moco_v2_shuffle_bn_and_identical_queues(two_process_runs):
    # the checks run inside the two processes (an assertion there fails the fixture with its traceback); here:
    # both ranks got through all three steps
    assert [torch.load(two_process_runs / f"moco_v2-rank{r}.pt") for r in range(WORLD)] == [[8, 0, 8]] * WORLD
