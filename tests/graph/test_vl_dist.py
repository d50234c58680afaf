"""CLIP and SigLIP graphs on 2 gloo processes against 1 process holding the same global batch.

The whole composed graph runs, wrapped in DDP: the data stage (augment and byte tokenizer) on fixed shapes
samples, the image tower, the text tower, the image projection, the learnable logit scale (and SigLIP's logit
bias), and the loss. One spawn serves the whole file (a module fixture); each rank runs two SGD iterations on
its half of fixed global batches (G = 8 image-caption pairs) and saves its local losses, gradients and final
state; the parent runs the same graph on the whole global batch in one process and compares.

What must hold, for both graphs (tests/blocks/test_losses_dist.py checks the same at the level of the losses alone):
- CLIP (open_clip local loss with gather-with-gradient, blocks/losses/clip.py): rank r's loss is the mean over
  its N rows of the image->text and text->image cross-entropies against all G columns, labels ``arange(N) + N r``;
  so it is exactly the share of the single-process loss that belongs to rows r N .. (r + 1) N, and the mean of
  the ranks' losses is the single-process loss.
- SigLIP (big_vision pair sum, blocks/losses/siglip.py): rank r's loss is the sum over its N images and all G
  texts of ``-log sigmoid(z (t x.y + b))``, divided by the local N; the single-process loss divides the sum over
  all G images by G = W N, so again the mean of the ranks' losses is the single-process loss, and each rank's
  loss is its rows' pair sum divided by N.
- The gathers' backward returns every rank's gradient to the features' owner, so DDP's gradient mean equals the
  single-process gradient, for every parameter; after an SGD step (and the logit-scale clamp) both ranks and
  the single process hold the same weights, so the second iteration agrees too.

Exact comparisons need a batch-split-invariant forward, and without SyncBN (CUDA-only) BatchNorm in train mode
normalises each rank's half with its own statistics; the tiny variants' resnet10t image tower is therefore
replaced by timm's BatchNorm-free LayerNorm ViT ``test_vit`` (64 features), and the text tower is shrunk
(width 32, one layer) so a forward takes milliseconds. Every parameter must get a non-zero gradient, so the
comparison cannot pass vacuously.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dist_helpers import sgd_record
from torch.nn.parallel import DistributedDataParallel as DDP

import composer
from composer.data import ShapesDataset, collate

WORLD, N, SIZE, STEPS = 2, 4, 32, 2   # N per rank; global batch G = 8
GRAPHS = Path(__file__).resolve().parents[2] / "graphs"

_SMALL = {
    "blocks.image_encoder.arch": "test_vit",  # LayerNorm ViT, no BatchNorm: rows independent of the split
    "blocks.image_encoder.model_args": "{img_size: 32, patch_size: 8, depth: 1}",
    "blocks.image_proj.dims": "[64, 32]",    # test_vit's 64 features -> embedding 32
    "blocks.text_encoder.width": 32,
    "blocks.text_encoder.layers": 1,
    "blocks.text_encoder.heads": 2,
    "blocks.text_encoder.output_dim": 32,    # context stays the tiny variant's 32 (tokenizer and text tower)
}
CASES = {"clip": (GRAPHS / "clip.yaml", _SMALL), "siglip": (GRAPHS / "siglip.yaml", _SMALL)}
SCALARS = {"clip": ["logit_scale.value"], "siglip": ["logit_scale.value", "logit_bias.value"]}


def _build(name: str):
    path, overrides = CASES[name]
    torch.manual_seed(0)  # the same initialisation in every process
    model = composer.build(composer.load(path, overrides, "tiny"), check=False)
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    return model


def _global_batch(model, step: int) -> dict:
    """The model-stage inputs of the whole global batch: shapes samples through the graph's own data stage.

    Seeded, so the random augmentation draws the same crops in every process; a rank then takes its rows."""
    data = ShapesDataset(n=WORLD * N, size=SIZE, seed=step)
    raw = collate([data[i] for i in range(WORLD * N)])
    torch.manual_seed(100 + step)
    batch = model.data_stage({k: raw[k] for k in model.spec.inputs})
    return {k: batch[k] for k in model.model_inputs}


def _rows(value, rows: slice):
    """``value`` restricted to the batch rows ``rows``: tensors, lists, and named tuples such as ``Tokens``."""
    if isinstance(value, torch.Tensor) or isinstance(value, list):
        return value[rows]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_rows(field, rows) for field in value))
    raise TypeError(f"cannot slice {type(value).__name__} by rows")


def _slice(batch: dict, rank: int) -> dict:
    return {k: _rows(v, slice(rank * N, (rank + 1) * N)) for k, v in batch.items()}


def _gradient_steps(model, forward_model, rank: int | None) -> list[dict]:
    """STEPS iterations of forward, backward, SGD step and state update (the logit-scale clamp).

    ``rank`` None: one process on the whole batch; else this rank's half. Each iteration's loss, gradients and
    (image, text) embeddings; then the final state."""
    model.train()

    def batch_at(step):
        batch = _global_batch(model, step)
        assert batch["x"].shape == (WORLD * N, 3, SIZE, SIZE) and batch["text"].ids.shape == (WORLD * N, 32)
        return batch if rank is None else _slice(batch, rank)

    def embeddings(out):
        return {"img": out.values["img"].detach().clone(), "txt": out.values["txt"].pooled.detach().clone()}
    return sgd_record(model, forward_model, batch_at, STEPS, embeddings)


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    for name in CASES:
        model = _build(name)
        ddp = DDP(model, broadcast_buffers=False)
        torch.save(_gradient_steps(model, ddp, rank), f"{out_dir}/{name}-rank{rank}.pt")


def _row_losses(name: str, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """Per-row terms of the single-process loss, written out from the papers' formulas (loss = their mean)."""
    if name == "clip":  # openai/CLIP model.py · forward; open_clip ClipLoss: (CE_image + CE_text) / 2 per row
        logits = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
        labels = torch.arange(len(img))
        return (F.cross_entropy(logits, labels, reduction="none")
                + F.cross_entropy(logits.T, labels, reduction="none")) / 2
    # big_vision siglip.py · loss_fn: nll_i = -sum_j log sigmoid(z_ij logits_ij); loss = mean_i nll_i
    x = img / (img.norm(dim=-1, keepdim=True) + 1e-8)
    y = txt / (txt.norm(dim=-1, keepdim=True) + 1e-8)
    logits = scale.exp() * x @ y.T + bias
    signs = 2 * torch.eye(len(img)) - 1
    return -F.logsigmoid(signs * logits).sum(dim=1)


def _compare(name: str, out_dir) -> None:
    model = _build(name)
    reference = _gradient_steps(model, model, None)
    ranks = [torch.load(out_dir / f"{name}-rank{r}.pt") for r in range(WORLD)]
    scale0 = torch.tensor(2.659260 if name == "clip" else 2.302585)
    for step in range(STEPS):
        ref = reference[step]
        for r, rank in enumerate(ranks):  # the towers saw the same rows: the embeddings are the reference's rows
            rows = slice(r * N, (r + 1) * N)
            assert torch.allclose(rank[step]["img"], ref["img"][rows], atol=1e-5), f"{name} step {step}: img"
            assert torch.allclose(rank[step]["txt"], ref["txt"][rows], atol=1e-5), f"{name} step {step}: txt"
        local = torch.stack([r[step]["loss"] for r in ranks])
        assert torch.allclose(local.mean(), ref["loss"], rtol=1e-5, atol=1e-5), \
            f"{name} step {step}: mean of the ranks' losses {local.tolist()} vs {float(ref['loss'])}"
        if step == 0:  # known scalars at initialisation: each rank's loss is its rows' share of the global loss
            per_row = _row_losses(name, ref["img"], ref["txt"], scale0, torch.tensor(-10.0))
            assert torch.allclose(per_row.mean(), ref["loss"], rtol=1e-5, atol=1e-5), f"{name}: formula"
            shares = per_row.view(WORLD, N).mean(dim=1)
            assert torch.allclose(local, shares, rtol=1e-5, atol=1e-5), \
                f"{name}: rank losses {local.tolist()} vs their rows' shares {shares.tolist()}"
        grads = ref["grads"]
        assert set(grads) == set(ranks[0][step]["grads"]) == set(ranks[1][step]["grads"])
        for prefix in ["image_encoder.", "image_proj.", "text_encoder.", *SCALARS[name]]:
            assert any(p.startswith(prefix) for p in grads), f"{name}: no parameter under {prefix}"
        for param, grad in grads.items():
            assert grad.abs().sum() > 0, f"{name}: {param} got no gradient, the comparison would be vacuous"
            for r in ranks:
                assert torch.allclose(r[step]["grads"][param], grad, rtol=1e-4, atol=2e-6), \
                    f"{name} step {step}: {param}: max diff {(r[step]['grads'][param] - grad).abs().max():.3g}"
    for key, value in reference[-1]["state"].items():  # weights after two steps (and the clamp)
        for r in ranks:
            assert torch.allclose(r[-1]["state"][key].float(), value.float(), rtol=1e-4, atol=1e-5), \
                f"{name}: {key}"


@pytest.mark.dist
def test_clip_two_processes_give_the_loss_and_gradients_of_one_on_the_global_batch(two_process_runs):
    _compare("clip", two_process_runs)


@pytest.mark.dist
def test_siglip_two_processes_give_the_loss_and_gradients_of_one_on_the_global_batch(two_process_runs):
    _compare("siglip", two_process_runs)
