"""Visual tokenizers for BEiT: a discrete VAE trained by its own graph, and its frozen copy inside BEiT.

BEiT (Bao et al. 2021, arXiv:2106.08254) predicts, at masked patches, the ids that a frozen discrete VAE gives
the image: ``input_ids = argmax_c(dVAE_encoder(images))`` (microsoft/unilm · beit/modeling_discrete_vae.py ·
``get_codebook_indices``). The paper uses DALL-E's pretrained dVAE (vocabulary 8192, 112 px → 14×14 ids);
nothing is downloaded here, so the tokenizer is the repository's own ``DiscreteVAE`` (the ``customized``
option of ``run_beit_pretraining.py --discrete_vae_type``, itself lucidrains' DALLE-pytorch), trained by
``graphs/beit_tokenizer.yaml`` and loaded frozen by ``graphs/beit.yaml``:

- ``tokenizer.dvae``: the trainable dVAE. Encoder: ``num_layers`` × [Conv 4×4 stride 2 + ReLU, ResBlock],
  then a 1×1 conv to ``num_tokens`` logits per cell, so a ``T×T`` image gives a ``T/2^n × T/2^n`` id grid.
  A Gumbel-softmax sample over the codebook feeds the mirror-image decoder (transposed convs).
- ``tokenizer.frozen``: the same encoder, loaded from a checkpoint, frozen (no gradient, always in eval mode,
  run under ``no_grad``), returning the ids ``(B, h·w)`` in row-major patch order.

The id grid must equal BEiT's patch grid: ``tokenizer_size / 2^num_layers == img_size / patch_size`` (112/8
= 224/16 = 14 in the paper).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime.checksum import digest
from composer.runtime.schedules import Schedule


class ResBlock(nn.Module):
    """DiscreteVAE's residual block: Conv3×3-ReLU-Conv3×3-ReLU-Conv1×1, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) + x


def dvae_encoder(num_tokens: int, num_layers: int, hidden_dim: int, channels: int = 3) -> nn.Sequential:
    """Image ``(B, C, T, T)`` → logits ``(B, num_tokens, T/2^n, T/2^n)`` (``DiscreteVAE.__init__``)."""
    layers: list[nn.Module] = []
    width = channels
    for _ in range(num_layers):
        layers += [nn.Sequential(nn.Conv2d(width, hidden_dim, 4, stride=2, padding=1), nn.ReLU()),
                   ResBlock(hidden_dim)]
        width = hidden_dim
    return nn.Sequential(*layers, nn.Conv2d(hidden_dim, num_tokens, 1))


def dvae_decoder(codebook_dim: int, num_layers: int, hidden_dim: int, channels: int = 3) -> nn.Sequential:
    """Codebook mixture ``(B, codebook_dim, h, w)`` → image ``(B, C, h·2^n, w·2^n)``."""
    layers: list[nn.Module] = []
    width = codebook_dim
    for _ in range(num_layers):
        layers += [nn.Sequential(nn.ConvTranspose2d(width, hidden_dim, 4, stride=2, padding=1), nn.ReLU()),
                   ResBlock(hidden_dim)]
        width = hidden_dim
    return nn.Sequential(*layers, nn.Conv2d(hidden_dim, channels, 1))


def _check_arch(kind: str, num_tokens: int, codebook_dim: int, num_layers: int, hidden_dim: int) -> None:
    if num_tokens < 2:
        raise ValueError(f"{kind}: num_tokens must be >= 2, got {num_tokens}")
    if codebook_dim < 1 or hidden_dim < 1:
        raise ValueError(f"{kind}: codebook_dim and hidden_dim must be positive, got {codebook_dim}, {hidden_dim}")
    if num_layers < 1:
        raise ValueError(f"{kind}: num_layers must be >= 1, got {num_layers}")


class DVAEOutput(NamedTuple):
    recon: Tensor  # (B, C, T, T) decoder output, in the input's value range
    logits: Tensor  # (B, K, T/2^n, T/2^n) encoder logits over the codebook
    pooled: Tensor  # (B, K) code probabilities averaged over the grid: a bag-of-visual-words embedding


@block("tokenizer.dvae")
class DiscreteVAE(nn.Module):
    """A discrete VAE (DALL-E style) whose encoder argmax gives BEiT's visual tokens.

    ``logits = encoder(image)``; ``z = gumbel_softmax(logits, τ)`` over the codebook axis (soft, or hard with
    a straight-through gradient); ``recon = decoder(z · codebook)`` (microsoft/unilm ·
    beit/modeling_discrete_vae.py · ``DiscreteVAE.forward``). Train it with ``loss.dvae``.

    The Gumbel temperature is a schedule; its current value sits in a buffer that ``update`` advances after
    each optimizer step (DALL-E anneals τ from 1 to 1/16; BEiT's ``DiscreteVAE`` default is a constant 0.9).
    ``pooled`` (the mean of ``softmax(logits)`` over the grid) is what probes read when the tokenizer graph
    is evaluated: how well a bag of its visual words separates the classes.

    Args:
        num_tokens: codebook size K, BEiT's visual vocabulary (8192 for DALL-E's dVAE; ``DiscreteVAE``
            default 512).
        codebook_dim: width of each codebook vector (512, ``DiscreteVAE`` default).
        num_layers: stride-2 stages; the id grid is the input side / 2^num_layers (3: 112 px → 14×14).
        hidden_dim: convolution width (64, ``DiscreteVAE`` default).
        temperature: Gumbel-softmax τ, a number or a schedule (0.9, ``DiscreteVAE`` default).
        straight_through: hard one-hot samples with straight-through gradients (False, ``DiscreteVAE``).

    Inputs:
        image: (B, 3, T, T) float, T divisible by 2^num_layers (BEiT's tokenizer view).
    """

    def __init__(self, *, num_tokens: int = 512, codebook_dim: int = 512, num_layers: int = 3,
                 hidden_dim: int = 64, temperature: Schedule = 0.9, straight_through: bool = False):
        super().__init__()
        _check_arch("tokenizer.dvae", num_tokens, codebook_dim, num_layers, hidden_dim)
        self.temperature = Schedule.parse(temperature)
        if min(self.temperature.start, self.temperature.end) <= 0:
            raise ValueError(f"tokenizer.dvae: temperature must stay > 0, got {temperature!r}")
        self.num_tokens, self.num_layers, self.straight_through = num_tokens, num_layers, straight_through
        self.codebook = nn.Embedding(num_tokens, codebook_dim)
        self.encoder = dvae_encoder(num_tokens, num_layers, hidden_dim)
        self.decoder = dvae_decoder(codebook_dim, num_layers, hidden_dim)
        # τ of the next forward; update() moves it along the schedule (forward never writes it)
        self.register_buffer("temperature_now", torch.tensor(float(self.temperature.start)))

    def forward(self, image: Tensor) -> DVAEOutput:
        _check_side("tokenizer.dvae", image, self.num_layers)
        logits = self.encoder(image)  # (B, K, h, w)
        z = gumbel_softmax(logits, self.temperature_now, self.straight_through)
        mixed = torch.einsum("bkhw,kd->bdhw", z, self.codebook.weight)  # (B, D, h, w)
        return DVAEOutput(self.decoder(mixed), logits, logits.softmax(dim=1).mean(dim=(2, 3)))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step ``step`` (0-based): hold τ for step ``step + 1``."""
        if not self.temperature.is_constant and self.temperature.total_steps is None:
            raise RuntimeError("tokenizer.dvae: the temperature schedule is not bound to the run; call "
                               "model.bind_schedules(total_steps, steps_per_epoch) first")
        self.temperature_now.fill_(self.temperature.at(step + 1))


def gumbel_softmax(logits: Tensor, tau: Tensor, hard: bool) -> Tensor:
    """``F.gumbel_softmax`` over axis 1 with a tensor τ (no host sync): softmax((logits + g) / τ), g ~ Gumbel(0, 1);
    ``hard`` returns the one-hot argmax with the soft sample's gradient (straight-through)."""
    gumbels = -torch.empty_like(logits).exponential_().log()
    soft = ((logits + gumbels) / tau).softmax(dim=1)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(1, soft.argmax(dim=1, keepdim=True), 1.0)
    return one_hot - soft.detach() + soft


def _check_side(kind: str, image: Tensor, num_layers: int) -> None:
    side = 2 ** num_layers
    if image.dim() != 4 or image.shape[-1] % side or image.shape[-2] % side:
        raise ValueError(f"{kind}: expected an image (B, 3, H, W) with H and W divisible by 2^num_layers = "
                         f"{side}, got {tuple(image.shape)}")


@block("tokenizer.frozen")
class FrozenTokenizer(nn.Module):
    """A trained ``tokenizer.dvae``, frozen: image → visual-token ids ``argmax_c logits`` (BEiT's labels).

    Loaded at construction from ``checkpoint``; never trained (``requires_grad`` False), always in eval mode
    (``train()`` keeps it there) and run under ``no_grad``, as BEiT's ``d_vae`` (``engine_for_pretraining.py``:
    ``with torch.no_grad(): input_ids = d_vae.get_codebook_indices(images).flatten(1)``). Only the encoder is
    kept: the ids need nothing else. The architecture parameters must be those the checkpoint was trained
    with; a mismatch is an error. Built on the ``meta`` device (``ptc check``'s dry run), it only takes the
    architecture's shapes and reads no file.

    ``checkpoint`` may be a run folder of the tokenizer graph (its newest ``checkpoints/step-*.pt``), one such
    checkpoint file (the block named ``source`` is taken from its ``model`` state), or a file holding the
    ``tokenizer.dvae`` state dict alone.

    Args:
        checkpoint: where the trained tokenizer is (default ``runs/beit_tokenizer``, the run folder that
            ``ptc train graphs/beit_tokenizer.yaml`` writes).
        made_by: the command that writes ``checkpoint``, quoted by the error when it is missing
            ("ptc train graphs/beit_tokenizer.yaml").
        source: the dVAE's block name in the tokenizer graph ("tokenizer").
        num_tokens: vocabulary size K (8192 for DALL-E's dVAE); must match the checkpoint and ``head.beit_lm``.
        num_layers: stride-2 stages of the encoder (3: 112 px → 14×14 ids).
        hidden_dim: convolution width (64).

    Inputs:
        image: (B, 3, T, T) float tokenizer view (``augment.beit``'s ``tokenizer_image``).

    Returns (B, (T/2^n)²) long ids, row-major over the grid.
    """

    def __init__(self, *, checkpoint: str = "runs/beit_tokenizer",
                 made_by: str = "ptc train graphs/beit_tokenizer.yaml", source: str = "tokenizer",
                 num_tokens: int = 512, num_layers: int = 3, hidden_dim: int = 64):
        super().__init__()
        _check_arch("tokenizer.frozen", num_tokens, 1, num_layers, hidden_dim)
        self.num_layers, self.checkpoint = num_layers, checkpoint
        self.encoder = dvae_encoder(num_tokens, num_layers, hidden_dim)
        if torch.empty(0).device.type != "meta":  # the dry run builds on meta: shapes only, nothing to read
            self.encoder.load_state_dict(_encoder_state(checkpoint, made_by, source, self.encoder))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTokenizer":
        return super().train(False)  # frozen: model.train() must not switch it out of eval mode

    def forward(self, image: Tensor) -> Tensor:
        _check_side("tokenizer.frozen", image, self.num_layers)
        with torch.no_grad():
            return self.encoder(image).argmax(dim=1).flatten(1)  # (B, h·w)


def _encoder_state(checkpoint: str, made_by: str, source: str, encoder: nn.Module) -> dict:
    """The encoder's state dict from ``checkpoint`` (run folder, run checkpoint or bare dVAE state dict)."""
    path = Path(checkpoint)
    if path.is_dir():
        found = sorted((path / "checkpoints").glob("step-*.pt"))  # zero-padded step numbers sort in order
        if not found:
            raise ValueError(_missing(checkpoint, made_by, "the folder holds no checkpoints/step-*.pt"))
        path = found[-1]
    elif not path.is_file():
        raise ValueError(_missing(checkpoint, made_by, "no such file or folder"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: one line naming it
        raise ValueError(f"tokenizer.frozen: cannot read {path} ({type(e).__name__}); remake it with "
                         f"`{made_by}`") from None
    if isinstance(state, dict) and "checksum" in state and state["checksum"] != digest(state):
        # torch's zip reader does not check the tensor records' CRC: flipped bytes would load as weights
        older = next((p for p in sorted(path.parent.glob("step-*.pt"), reverse=True)
                      if p.name < path.name and _intact(p)), None)
        hint = f"point checkpoint at the older intact {older}, or remake it" if older else "remake it"
        raise ValueError(f"tokenizer.frozen: {path} is corrupt: its content no longer matches its checksum; "
                         f"{hint} with `{made_by}`")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a pretext-composer run checkpoint
        prefix = source + "."
        state = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"tokenizer.frozen: {path} holds no block named {source!r} (set 'source' to the "
                             f"tokenizer's block name in the graph that trained it)")
    if not isinstance(state, dict):
        raise ValueError(f"tokenizer.frozen: {path} is not a state dict")
    state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    own = encoder.state_dict()
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if wrong or len(state) != len(own):
        k = wrong[0] if wrong else next(k for k in state if k not in own)
        got = tuple(state[k].shape) if k in state else "missing"
        want = tuple(own[k].shape) if k in own else "unexpected"
        raise ValueError(f"tokenizer.frozen: {path} does not match num_tokens/num_layers/hidden_dim "
                         f"(encoder.{k}: checkpoint {got}, this block {want})")
    return state


def _intact(path: Path) -> bool:
    """Whether a run checkpoint reads back and matches the checksum it carries."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict) and state.get("checksum") == digest(state)


def _missing(checkpoint: str, made_by: str, why: str) -> str:
    return (f"tokenizer.frozen: no tokenizer checkpoint at {os.fspath(checkpoint)!r} ({why}); make it with "
            f"`{made_by}`, or point the block's checkpoint at one with --set")
