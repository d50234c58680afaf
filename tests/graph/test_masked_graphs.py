"""The masked-modelling graphs (graphs/mae.yaml, beit.yaml, beit_tokenizer.yaml, ijepa.yaml) against
The official code of MAE, BEiT and I-JEPA: each loss recomputed by hand from the graph's own values, the stop-gradient
structure, the EMA schedule, the frozen tokenizer, and the encoder's cost at MAE's mask ratio."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import composer
from composer.graph.shapes import example_batch
from composer.runtime.errors import GraphErrors
from composer.train import checkpoint

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


def _build(name: str, overrides=(), seed: int = 0):
    torch.manual_seed(seed)
    spec = composer.load(GRAPHS / f"{name}.yaml", list(overrides), variant="tiny")
    model = composer.build(spec)
    model.bind_schedules(total_steps=10, steps_per_epoch=5)
    return model, model.data_stage(example_batch(spec, 4))


def _block(name: str, block: str, device="cpu", variant=None):
    """One block of a shipped graph, built from the graph's own parameters."""
    spec = composer.load(GRAPHS / f"{name}.yaml", variant=variant)
    from composer.graph.compile import block_kwargs
    bs = spec.blocks[block]
    with torch.device(device):
        return bs.info.cls(**block_kwargs(bs, {}))


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


# ----------------------------------------------------------------------------------------------------- MAE


def test_mae_loss_vector_with_the_graphs_loss_block():
    """MAE forward_loss: pred = 0, one random 16x16x3 patch, mask = 1 → 767/768 (unbiased variance), not 1.0."""
    loss = _block("mae", "mae_loss")
    torch.manual_seed(0)
    image = torch.randn(1, 3, 16, 16)
    value = loss(torch.zeros(1, 1, 768), image, torch.ones(1, 1))
    assert value.item() == pytest.approx(0.998698, abs=1e-6)


def test_mae_graph_loss_is_norm_pix_mse_over_removed_patches_only():
    model, batch = _build("mae")
    spec = model.spec
    assert not any(e.sg for n in spec.nodes.values() for e in n.inputs.values())  # no stop-gradient at all
    assert not any(b.info.family in ("teacher", "memory") for b in spec.blocks.values())
    out = model(batch)
    x, masks, pred = batch["x"], batch["masks"], out.values["pred"]
    assert out.values["latent"].tokens.shape == (4, 1 + 16, 128)  # cls + the 16 kept of 64 patches
    assert masks.mask.sum(1).tolist() == [48.0] * 4
    target = _patchify(x, 8)  # tiny: 64 px, 8 px patches
    n = target.shape[-1]
    mean = target.mean(-1, keepdim=True)
    var = ((target - mean) ** 2).sum(-1, keepdim=True) / (n - 1)
    target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = per_patch[masks.mask.bool()].mean()
    torch.testing.assert_close(out.loss, expected)
    # kept patches do not enter the loss: changing their prediction changes nothing
    edited = pred.detach().clone()
    edited[~masks.mask.bool()] += 5.0
    torch.testing.assert_close(model.mae_loss(edited, x, masks.mask), out.loss.detach())
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # gradient reaches the encoder input layer
    assert model.encoder.cls_token.grad.abs().sum() > 0 and model.decoder.mask_token.grad.abs().sum() > 0


def test_mae_encoder_flops_at_075_are_a_quarter_of_unmasked():
    """The graph's encoder (ViT-L/16, 224 px) on the masker's kept tokens, counted on the meta device."""
    encoder = _block("mae", "encoder", device="meta")
    keep = _block("mae", "masker")(torch.zeros(2, 3, 224, 224)).keep
    assert keep.shape == (2, 49)
    image = torch.empty(2, 3, 224, 224, device="meta")

    def flops(**kw) -> int:
        with FlopCounterMode(display=False) as counter:
            encoder(image, **kw)
        return counter.get_total_flops()

    full, masked = flops(), flops(keep=keep.to("meta"))
    assert full > 2.4e11  # ≈ 2 · 2 · 304M params · 197 tokens: the 24 blocks are counted
    assert abs(masked / (full / 4) - 1) < 0.05


# ----------------------------------------------------------------------------------------------------- I-JEPA


def test_ijepa_graph_loss_targets_and_masks():
    model, batch = _build("ijepa")
    masks = batch["masks"]
    npred, b, kp = masks.targets.shape
    for i in range(b):  # context and targets are disjoint (allow_overlap: false)
        assert not set(masks.context[i].tolist()) & set(masks.targets[:, i].flatten().tolist())
    out = model(batch)
    with torch.no_grad():
        h = model.target_encoder(batch["x"]).tokens  # (B, 64, D): the full image, no cls token
        h = torch.nn.functional.layer_norm(h, h.shape[-1:])
    target = torch.stack([h[i, masks.targets[m, i]] for m in range(npred) for i in range(b)])  # mask-major
    d = out.values["pred"] - target
    expected = torch.where(d.abs() < 1, 0.5 * d ** 2, d.abs() - 0.5).mean()
    torch.testing.assert_close(out.loss, expected)
    assert out.values["z"].tokens.shape[1] == masks.context.shape[1]  # the encoder saw the context only
    out.loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_ijepa_target_encoder_is_ema_with_linear_momentum():
    model, batch = _build("ijepa")
    momentum = model.target_encoder.momentum
    assert momentum.at(0) == pytest.approx(0.996) and momentum.at(5) == pytest.approx(0.998)  # 0.996 + 5·0.004/10
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    out = model(batch)
    out.loss.backward()
    opt.step()
    before = [p.detach().clone() for p in model.target_encoder.parameters()]
    student = [p.detach().clone() for p in model.encoder.parameters()]
    model.update(out, 0)
    for t, s, new in zip(before, student, model.target_encoder.parameters()):
        torch.testing.assert_close(new, 0.996 * t + 0.004 * s)


# ----------------------------------------------------------------------------------------------------- BEiT


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """A run folder as `ptc train graphs/beit_tokenizer.yaml --variant tiny` writes it, from a fresh dVAE."""
    model, batch = _build("beit_tokenizer", seed=1)
    out = model(batch)
    assert out.values["out"].logits.shape[-2:] == (8, 8)  # 32 px / 2^2: the tiny BEiT's 8x8 patch grid
    run = tmp_path_factory.mktemp("beit_tokenizer_tiny")
    checkpoint.save(checkpoint.path_for(run, 1), {"format": checkpoint.FORMAT, "step": 1,
                                                  "model": model.state_dict()})
    return run, model


def test_beit_graph_loads_the_tokenizer_frozen_and_predicts_masked_tokens_only(tokenizer_run):
    run, tok_model = tokenizer_run
    model, batch = _build("beit", [f"blocks.tokenizer.checkpoint={run}"])
    model.train()
    assert not model.tokenizer.training and not any(p.requires_grad for p in model.tokenizer.parameters())
    views, masks = batch["views"], batch["masks"]
    out = model(batch)
    ids = out.values["ids"]
    with torch.no_grad():
        expected_ids = tok_model.tokenizer.encoder(views.tokenizer_image).argmax(1).flatten(1)
    torch.testing.assert_close(ids, expected_ids)  # the tokenizer graph's weights, argmax_c, row-major
    assert ids.shape == masks.mask.shape == (4, 64) and ids.grad_fn is None
    logits = out.values["logits"]
    terms = []
    for i in range(4):
        where = masks.mask[i].nonzero().flatten()
        n = int(masks.valid[i].sum())
        assert n == len(where) and masks.index[i, :n].tolist() == where.tolist()
        terms.append(torch.nn.functional.cross_entropy(logits[i, :n], ids[i, where], reduction="none"))
    torch.testing.assert_close(out.loss, torch.cat(terms).mean())  # mean over the batch's masked tokens
    out.loss.backward()
    assert all(p.grad is None for p in model.tokenizer.parameters())
    assert model.encoder.mask_token.grad.abs().sum() > 0


def test_beit_checks_without_a_checkpoint_and_builds_only_with_one(tmp_path):
    where = tmp_path / "no_tokenizer_here"
    spec = composer.load(GRAPHS / "beit.yaml", [f"blocks.tokenizer.checkpoint={where}"], variant="tiny")
    report = composer.check(spec)  # the dry run reads no checkpoint
    assert report.values["ids"].shape[1] == report.values["masks"].mask.shape[1]  # token grid = patch grid
    with pytest.raises(GraphErrors) as e:
        composer.build(spec)
    msg = str(e.value)
    assert str(where) in msg and "`ptc train graphs/beit_tokenizer.yaml --variant tiny --out runs/beit_tokenizer_tiny`" in msg


def test_full_size_token_grid_matches_the_patch_grid():
    spec = composer.load(GRAPHS / "beit.yaml")
    assert spec.blocks["tokenizer"].params["num_tokens"] == spec.blocks["lm_head"].params["vocab_size"]
    report = composer.check(spec)
    assert tuple(report.values["ids"].shape) == (2, 196) and tuple(report.values["masks"].mask.shape) == (2, 196)
