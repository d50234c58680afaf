"""BEiT's visual tokenizer: the trainable discrete VAE, its loss, and the frozen copy loaded from a checkpoint."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from composer.blocks.losses.dvae import DVAELoss
from composer.blocks.registry import get
from composer.blocks.tokenizers import DiscreteVAE, FrozenTokenizer, gumbel_softmax

ARCH = dict(num_tokens=16, num_layers=2, hidden_dim=8)


def _dvae(seed: int = 0, **kw) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(codebook_dim=8, **{**ARCH, **kw})


def test_registered_kinds_and_stages():
    assert get("tokenizer.dvae").outputs == ("recon", "logits", "pooled")
    assert get("tokenizer.frozen").outputs is None and get("tokenizer.frozen").stage == "model"
    assert "checkpoint" in get("tokenizer.frozen").params and "made_by" in get("tokenizer.frozen").params


def test_dvae_shapes_grid_and_pooled_distribution():
    out = _dvae()(torch.randn(3, 3, 32, 32))
    assert out.recon.shape == (3, 3, 32, 32)
    assert out.logits.shape == (3, 16, 8, 8)  # 32 px / 2^2 = 8x8 ids
    torch.testing.assert_close(out.pooled, out.logits.softmax(1).mean(dim=(2, 3)))
    torch.testing.assert_close(out.pooled.sum(1), torch.ones(3))


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_matches_torch_with_the_same_draws(hard):
    logits = torch.randn(2, 5, 3, 3, requires_grad=True)
    torch.manual_seed(7)
    ours = gumbel_softmax(logits, torch.tensor(0.7), hard)
    torch.manual_seed(7)
    ref = F.gumbel_softmax(logits, tau=0.7, dim=1, hard=hard)
    torch.testing.assert_close(ours, ref)
    w = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref)  # straight-through: the soft sample's gradient


def test_temperature_follows_schedule_through_update_only():
    vae = DiscreteVAE(codebook_dim=8, temperature={"cosine": [1.0, 0.5]}, **ARCH)
    assert float(vae.temperature_now) == 1.0
    with pytest.raises(RuntimeError, match="bind_schedules"):
        vae.update(0)
    vae.temperature.bind(10, 5)
    vae(torch.randn(1, 3, 16, 16))
    assert float(vae.temperature_now) == 1.0  # forward does not move it
    vae.update(4)  # after step 4: tau of step 5 = 0.5 + 0.5 (1 + cos(pi/2)) / 2
    assert float(vae.temperature_now) == pytest.approx(0.75)


def test_dvae_loss_is_mse_plus_mean_kl_to_uniform():
    recon, image = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    logits = torch.randn(2, 6, 4, 4)
    assert DVAELoss()(recon, image, logits) == pytest.approx(((recon - image) ** 2).mean().item(), rel=1e-6)
    q = logits.softmax(1)
    kl = (q * (q * 6).log()).sum(1).mean()  # KL(q || 1/K) per position, averaged over B·h·w
    got = DVAELoss(kl_weight=0.3)(recon, image, logits)
    assert got == pytest.approx((((recon - image) ** 2).mean() + 0.3 * kl).item(), rel=1e-5)
    assert DVAELoss(kl_weight=1.0)(image, image, torch.zeros(2, 6, 4, 4)) == pytest.approx(0.0, abs=1e-7)


def test_dvae_trains_end_to_end():
    vae, loss_fn = _dvae(), DVAELoss()
    image = torch.rand(4, 3, 16, 16) * 2 - 1
    out = vae(image)
    loss_fn(out.recon, image, out.logits).backward()
    for name in ("codebook.weight", "encoder.0.0.weight", "decoder.0.0.weight"):
        assert vae.get_parameter(name).grad is not None and vae.get_parameter(name).grad.abs().sum() > 0, name


def test_frozen_round_trip_from_a_bare_state_dict(tmp_path):
    vae = _dvae(seed=3)
    path = tmp_path / "tokenizer.pt"
    torch.save(vae.state_dict(), path)
    torch.manual_seed(99)  # a different init, so equality below comes from the file
    tok = FrozenTokenizer(checkpoint=str(path), **ARCH)
    image = torch.randn(2, 3, 32, 32)
    ids = tok(image)
    assert ids.shape == (2, 64) and ids.dtype == torch.long
    torch.testing.assert_close(ids, vae.encoder(image).argmax(1).flatten(1))  # BEiT: argmax_c, row-major
    assert not any(p.requires_grad for p in tok.parameters())
    assert tok.train().training is False  # model.train() leaves it in eval mode
    with torch.enable_grad():
        assert not tok.encoder(image).requires_grad
    assert not any(k.startswith(("decoder", "codebook")) for k in tok.state_dict())  # ids need the encoder only


def test_frozen_reads_run_checkpoints_and_picks_the_newest(tmp_path):
    old, new = _dvae(seed=1), _dvae(seed=2)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for step, vae in ((9, old), (10, new)):  # step-00000010 sorts after step-00000009
        model_state = {f"tokenizer.{k}": v for k, v in vae.state_dict().items()}
        model_state["aug_unrelated.weight"] = torch.zeros(1)
        torch.save({"format": 1, "step": step, "model": model_state}, folder / f"step-{step:08d}.pt")
    image = torch.randn(2, 3, 16, 16)
    for where in (tmp_path / "run", folder / "step-00000010.pt"):
        ids = FrozenTokenizer(checkpoint=str(where), **ARCH)(image)
        torch.testing.assert_close(ids, new.encoder(image).argmax(1).flatten(1))
    with pytest.raises(ValueError, match="no block named 'dvae'"):
        FrozenTokenizer(checkpoint=str(tmp_path / "run"), source="dvae", **ARCH)


def test_missing_checkpoint_names_the_command_that_makes_it(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(ValueError) as e:
        FrozenTokenizer(checkpoint=str(where), made_by="ptc train graphs/beit_tokenizer.yaml --out X", **ARCH)
    msg = str(e.value)
    assert "\n" not in msg and str(where) in msg and "`ptc train graphs/beit_tokenizer.yaml --out X`" in msg
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ValueError, match=r"no checkpoints/step-\*\.pt.*ptc train graphs/beit_tokenizer.yaml"):
        FrozenTokenizer(checkpoint=str(tmp_path / "empty_run"), **ARCH)
    with torch.device("meta"):  # the dry run of `ptc check` builds without reading anything
        tok = FrozenTokenizer(checkpoint=str(where), **ARCH)
    assert tok(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 64)


def test_mismatched_or_broken_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "tokenizer.pt"
    torch.save(_dvae().state_dict(), path)
    with pytest.raises(ValueError, match=r"does not match num_tokens.*checkpoint \(16, 8, 1, 1\), this block \(32"):
        FrozenTokenizer(checkpoint=str(path), **{**ARCH, "num_tokens": 32})
    with pytest.raises(ValueError, match="does not match"):
        FrozenTokenizer(checkpoint=str(path), **{**ARCH, "num_layers": 3})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pt.*remake it with"):
        FrozenTokenizer(checkpoint=str(tmp_path / "junk.pt"), **ARCH)


def test_flipped_bytes_in_a_run_checkpoint_are_one_line_naming_it_and_the_older_intact_one(tmp_path):
    """Checksums as the trainer writes them (composer.train.checkpoint.save): a changed file must not load as
    weights; the message names the file and the older intact checkpoint beside it."""
    from composer.train.checkpoint import save
    from fault_helpers import flip_bytes
    folder = tmp_path / "run" / "checkpoints"
    for step, seed in ((9, 1), (10, 2)):
        model_state = {f"tokenizer.{k}": v for k, v in _dvae(seed=seed).state_dict().items()}
        save(folder / f"step-{step:08d}.pt", {"step": step, "model": model_state})
    image = torch.randn(2, 3, 16, 16)
    FrozenTokenizer(checkpoint=str(tmp_path / "run"), **ARCH)(image)  # intact: loads
    newest, older = folder / "step-00000010.pt", folder / "step-00000009.pt"
    flip_bytes(newest)
    for where in (tmp_path / "run", newest):
        with pytest.raises(ValueError) as e:
            FrozenTokenizer(checkpoint=str(where), made_by="ptc train graphs/beit_tokenizer.yaml", **ARCH)
        msg = str(e.value)
        assert "\n" not in msg and f"{newest} is corrupt" in msg and f"older intact {older}" in msg, msg
    flip_bytes(older)  # no intact one left: the message only says how to remake it
    with pytest.raises(ValueError, match=r"is corrupt: .*checksum; remake it with `ptc train"):
        FrozenTokenizer(checkpoint=str(newest), made_by="ptc train graphs/beit_tokenizer.yaml", **ARCH)


@pytest.mark.parametrize("kind, kw", [
    ("tokenizer.dvae", {"num_tokens": 1}), ("tokenizer.dvae", {"num_layers": 0}),
    ("tokenizer.dvae", {"temperature": 0.0}), ("tokenizer.dvae", {"hidden_dim": 0}),
    ("tokenizer.frozen", {"num_tokens": 1}), ("loss.dvae", {"kl_weight": -1.0}),
])
def test_bad_params_raise_naming_the_block(kind, kw):
    with pytest.raises(ValueError, match=kind.replace(".", r"\.")):
        with torch.device("meta"):
            get(kind).cls(**kw)


def test_image_side_must_divide_into_the_grid():
    with pytest.raises(ValueError, match="divisible by 2\\^num_layers = 4"):
        _dvae()(torch.randn(1, 3, 18, 18))


def test_uniform_logits_kl_is_zero_and_peaked_is_log_k():
    peaked = torch.full((1, 8, 1, 1), -1e4)
    peaked[0, 3] = 0.0
    assert DVAELoss(kl_weight=1.0)(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), peaked) == pytest.approx(
        math.log(8), rel=1e-5)
