"""SwAV's queue (graphs/swav.yaml, variants ``bs256`` and ``tiny_queue``; ``memory.fifo``) against
facebookresearch/swav main_swav.py and lightly 1.6.0.

- the queue program equals lightly's ``SwaVLoss(...)(high, low, queue_outputs=...)`` in value and gradient once
  the queue is in use, and lightly's loss without a queue before;
- several training steps of the graph equal ``main_swav.py · main/train`` written out below (queue allocated at
  ``epoch_queue_starts``, used once its last row is non-zero, ``use_the_queue`` reset every epoch, queue scores
  recomputed with the current prototypes, the queue shifted by the batch), through the empty → full transition;
- two gloo processes equal the official per-process queues (each rank's queue fed by its own batch, Sinkhorn
  marginals summed over ranks), simulated in one process as the reference;
- a run resumed from a checkpoint continues the queue as the uninterrupted run does.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dist_helpers import sgd_record, spawn
from test_swav import GRAPH, SMALL
from torch.nn.parallel import DistributedDataParallel as DDP
from train_helpers import fast, final_model, losses

import composer
from composer.blocks.expr.block import ExpressionLoss
from composer.graph.shapes import example_batch

WORLD, N, SPE, STEPS = 2, 4, 2, 7  # N images per rank; 2 steps an epoch; 7 steps cross every transition
QUEUE = {**SMALL, "blocks.queue.dim": 16, "blocks.queue.size": 2 * WORLD * N, "blocks.queue.start": "1ep"}
LR = 0.5


# -- main_swav.py, written out ---------------------------------------------------------------------------------
def sinkhorn_on_ranks(outs: list, epsilon=0.05, iterations=3) -> list:
    """main_swav.py · distributed_sinkhorn run by W processes at once: ``outs[r]`` (B, K) is rank r's input;
    each ``dist.all_reduce`` (the total, the row sums) is the sum over the W ranks."""
    Qs = [torch.exp(out / epsilon).t() for out in outs]
    B, K = Qs[0].shape[1] * len(outs), Qs[0].shape[0]
    total = sum(torch.sum(Q) for Q in Qs)
    Qs = [Q / total for Q in Qs]
    for _ in range(iterations):
        rows = sum(torch.sum(Q, dim=1, keepdim=True) for Q in Qs)
        Qs = [Q / rows / K for Q in Qs]
        Qs = [Q / torch.sum(Q, dim=0, keepdim=True) / B for Q in Qs]
    return [(Q * B).t() for Q in Qs]


class OfficialQueues:
    """The queue logic of main_swav.py · main and train on W simulated processes, for one process's embedding
    (n_crops·bs, D) and output (n_crops·bs, K) each (``--crops_for_assign 0 1``, temperature 0.1)."""

    def __init__(self, world: int, queue_length: int, epoch_queue_starts: int, bs: int, feat_dim: int):
        self.world, self.bs, self.feat_dim, self.starts = world, bs, feat_dim, epoch_queue_starts
        self.length = queue_length - queue_length % (bs * world)  # main: rounded down to the global batch
        self.queue = None   # one (2, length // world, D) per rank
        self.used = None    # the last use_the_queue of each rank and crop (recorded for the tests)

    def start_epoch(self, epoch: int) -> None:
        if self.length > 0 and epoch >= self.starts and self.queue is None:
            self.queue = [torch.zeros(2, self.length // self.world, self.feat_dim) for _ in range(self.world)]
        self.use_the_queue = [False] * self.world  # train(): a local flag, False at every epoch start

    def losses(self, embedding: list, output: list, prototypes: torch.Tensor) -> list:
        bs, n_crops = self.bs, output[0].shape[0] // self.bs
        loss = [0.0] * self.world
        self.used = []
        for i, crop_id in enumerate((0, 1)):
            outs = []
            with torch.no_grad():
                for r in range(self.world):
                    out = output[r][bs * crop_id:bs * (crop_id + 1)].detach()
                    if self.queue is not None:
                        queue = self.queue[r]
                        if self.use_the_queue[r] or not torch.all(queue[i, -1, :] == 0):
                            self.use_the_queue[r] = True
                            out = torch.cat((torch.mm(queue[i], prototypes.t()), out))
                        queue[i, bs:] = queue[i, :-bs].clone()
                        queue[i, :bs] = embedding[r][crop_id * bs:(crop_id + 1) * bs]
                    outs.append(out)
                self.used.append(list(self.use_the_queue))
                q = [codes[-bs:] for codes in sinkhorn_on_ranks(outs)]
            for r in range(self.world):
                subloss = 0
                for v in np.delete(np.arange(n_crops), crop_id):
                    x = output[r][bs * v:bs * (v + 1)] / 0.1
                    subloss -= torch.mean(torch.sum(q[r] * F.log_softmax(x, dim=1), dim=1))
                loss[r] += subloss / (n_crops - 1)
        return [value / 2 for value in loss]


def official_record(model, batches: list, world: int, states: list) -> tuple[list, OfficialQueues]:
    """main_swav.py's loop on ``model`` (its forward only supplies embedding and output): every rank's rows of
    each global batch, the mean of the ranks' losses (DDP's gradient average). Each step starts from the
    weights ``states[step]`` that our run had at that step, so float32 rounding cannot grow over the steps
    (a ResNet in train-mode BatchNorm amplifies it tenfold or more per step); the queues evolve on their own."""
    official = OfficialQueues(world, QUEUE["blocks.queue.size"], 1, N * WORLD // world, 16)
    record = []
    for step, views in enumerate(batches):
        if step % SPE == 0:
            official.start_epoch(step // SPE)
        model.load_state_dict({k: v for k, v in states[step].items() if not k.startswith("queue.")}, strict=False)
        proto = model.prototypes.linear.weight
        with torch.no_grad():  # train(): normalize the prototypes (ours keeps them normalised: a no-op)
            proto.copy_(F.normalize(proto.clone(), dim=1, p=2))
        outs = [model({"views": _rows(views, r, world)}) for r in range(world)]
        embedding = [o.values["z"].reshape(-1, 16).detach() for o in outs]
        output = [o.values["s"].reshape(-1, 10) for o in outs]
        per_rank = official.losses(embedding, output, proto.detach())
        (sum(per_rank) / world).backward()
        record.append({"losses": [x.detach() for x in per_rank], "used": official.used,
                       "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}})
        model.zero_grad(set_to_none=True)
    return record, official


# -- ours --------------------------------------------------------------------------------------------------
def _build(overrides=QUEUE):
    torch.manual_seed(0)
    model = composer.build(composer.load(GRAPH, overrides, "tiny_queue"), check=False)
    model.bind_schedules(total_steps=STEPS, steps_per_epoch=SPE)
    return model


def _batches() -> list:
    """The data stage's crops of STEPS global batches of WORLD·N images."""
    model = _build()
    out = []
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        out.append(model.data_stage(example_batch(model.spec, n=WORLD * N))["views"])
    return out


def _rows(views, rank: int, world: int):
    n = views[0].shape[1] // world
    return type(views)(*(v[:, rank * n:(rank + 1) * n] for v in views))


def _same_gradient(ours, theirs, msg: str) -> None:
    """Equal up to float32 rounding, which train-mode BatchNorm amplifies in the first layers (1e-6 of the
    largest entry), with an absolute floor for gradients that are rounding alone (a bias before a BatchNorm)."""
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=max(1e-5 * float(theirs.abs().max()), 1e-6), msg=msg)


def _recorder(model):
    """sgd_record's extra: the queue's full flag and the weights the step's forward used."""
    return lambda out: {"full": bool(out.values["queue"].full),
                        "weights": {k: v.clone() for k, v in model.state_dict().items()}}


# -- (a) the loss ---------------------------------------------------------------------------------------------
def test_the_queue_program_is_lightly_swav_loss_with_queue_outputs():
    from lightly.loss import SwaVLoss
    spec = composer.load(GRAPH, variant="bs256")
    program = ExpressionLoss(expr=spec.blocks["swav_loss"].params["expr"])
    gen = torch.Generator().manual_seed(1)
    s = (torch.randn(8, 5, 7, generator=gen, dtype=torch.float64) / 2).requires_grad_(True)
    sq = torch.randn(2, 15, 7, generator=gen, dtype=torch.float64) / 2
    lightly = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    for use in (True, False):
        ours = program._evaluate({"s": s, "sq": sq, "use_queue": torch.tensor(use)})
        (g_ours,) = torch.autograd.grad(ours, s)
        t = s.detach().clone().requires_grad_(True)
        theirs = lightly(list(t[:2]), list(t[2:]), queue_outputs=list(sq) if use else None)
        (g_theirs,) = torch.autograd.grad(theirs.sum(), t)
        torch.testing.assert_close(ours, theirs.reshape(()), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-12)
        if use:
            with_queue = ours
    assert not torch.allclose(with_queue, ours)  # the queue changes the codes: the comparison is not vacuous


# -- (b) several steps on one process ---------------------------------------------------------------------------
def test_steps_follow_main_swav_through_queue_start_and_full():
    """Steps 0-1: no queue (epoch 0 < epoch_queue_starts 1); 2-3: allocated and filled, not used; 4-6: used
    (the last row is written after 2 batches); use_the_queue is reset at epochs 2 and 3 and set again."""
    batches = _batches()
    model = _build()
    reference = _build()
    ours = sgd_record(model, model, lambda step: {"views": batches[step]}, STEPS, extra=_recorder(model), lr=LR)
    theirs, official = official_record(reference, batches, 1, [r["weights"] for r in ours[:-1]])
    assert [r["full"] for r in ours[:-1]] == [False] * 4 + [True] * 3
    assert [r["used"] == [[True], [True]] for r in theirs] == [False] * 4 + [True] * 3
    for step, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a["loss"], b["losses"][0], rtol=1e-5, atol=1e-6, msg=f"step {step}")
        for name, grad in b["grads"].items():
            _same_gradient(a["grads"][name], grad, f"step {step}: {name}")
    state = ours[-1]["state"]
    torch.testing.assert_close(state["queue.memory"][:, 0], official.queue[0], rtol=1e-5, atol=1e-6)
    assert int(state["queue.written"]) == official.queue[0].shape[1]


# -- (c) two processes ---------------------------------------------------------------------------------------
def _dist_worker(rank: int, world: int, out_dir: str, batches: list) -> None:
    torch.set_num_threads(1)
    model = _build()  # after init_process_group: memory.fifo holds one queue per process
    assert tuple(model.queue.memory.shape) == (2, world, 2 * N, 16)
    record = sgd_record(model, DDP(model, broadcast_buffers=False),
                        lambda step: {"views": _rows(batches[step], rank, world)}, STEPS, extra=_recorder(model),
                        lr=LR)
    torch.save(record, f"{out_dir}/rank{rank}.pt")


@pytest.mark.dist
def test_two_processes_keep_the_official_per_process_queues(tmp_path):
    batches = _batches()
    spawn(_dist_worker, WORLD, str(tmp_path), batches)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    theirs, official = official_record(_build(), batches, WORLD, [r["weights"] for r in ranks[0][:-1]])
    assert [r["used"] == [[True] * WORLD] * 2 for r in theirs] == [False] * 4 + [True] * 3
    for step in range(STEPS):
        for r in range(WORLD):  # each rank's own loss: its codes come from all ranks' batches and queues
            assert ranks[r][step]["full"] == (step >= 4)
            torch.testing.assert_close(ranks[r][step]["loss"], theirs[step]["losses"][r], rtol=1e-5, atol=1e-6,
                                       msg=f"step {step}, rank {r}")
            for name, grad in theirs[step]["grads"].items():
                _same_gradient(ranks[r][step]["grads"][name], grad, f"step {step}, rank {r}: {name}")
    for r in range(WORLD):  # the stored state: every rank's queue, identical on every rank
        for state in (ranks[0][-1]["state"], ranks[1][-1]["state"]):
            torch.testing.assert_close(state["queue.memory"][:, r], official.queue[r], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(official.queue[0], official.queue[1])  # the ranks' queues differ


# -- (d) checkpoint and resume --------------------------------------------------------------------------------
def test_a_resumed_run_continues_the_queue(tmp_path):
    """8 steps of 8 images (8 steps an epoch); the queue (2 batches) starts at step 2 and is used from step 4;
    the run resumed from its step-5 checkpoint repeats the uninterrupted run's losses and final queue."""
    from composer.train import checkpoint, train
    overrides = {**QUEUE, "blocks.queue.size": 16, "blocks.queue.start": 2, "train.batch_size": 8,
                 "train.steps": 8, "train.freeze": "{prototypes: 1}"}
    reference = tmp_path / "reference"
    train(composer.load(GRAPH, overrides, "tiny_queue"), fast(reference, ckpt_every=5, keep=3))
    saved = checkpoint.load(checkpoint.path_for(reference, 5))["model"]
    assert int(saved["queue.written"]) == 16 and saved["queue.memory"].abs().sum() > 0
    resumed = tmp_path / "resumed"
    train(composer.load(GRAPH, overrides, "tiny_queue"),
          fast(resumed, resume=str(checkpoint.path_for(reference, 5))))
    got, want = losses(resumed), losses(reference)
    assert [s for s, _ in got] == [6, 7, 8]
    torch.testing.assert_close(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want[5:]]),
                               rtol=1e-5, atol=1e-6)
    a, b = final_model(resumed), final_model(reference)
    torch.testing.assert_close(a["queue.memory"], b["queue.memory"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a["queue.memory"], saved["queue.memory"])  # written after the resume


# -- (e) one graph for the whole run -----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_queue_start_and_fill_compile_into_one_graph():
    """torch.compile(fullgraph=True) of the model stage (dynamo only: the backend runs the captured graph): the
    queue starting (step 2) and filling (step 4) change buffers, not Python values, so nothing recompiles."""
    batches = _batches()
    model, eager = _build(), _build()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model.compile(fullgraph=True, backend=backend)
    for step in range(6):
        out, want = model({"views": batches[step]}), eager({"views": batches[step]})
        torch.testing.assert_close(out.loss, want.loss, rtol=1e-5, atol=1e-6)
        assert bool(out.values["queue"].full) == (step >= 4)
        model.update(out, step)
        eager.update(want, step)
    assert len(graphs) == 1
