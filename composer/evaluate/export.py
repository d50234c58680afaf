"""Export of a graph's embedding block as timm weights (``ptc export``).

Writes the graph's ``embedding:`` block as a safetensors file that timm loads with ``strict=True``:

- ``encoder.timm`` and ``encoder.timm_vit``: the timm model itself (``encoder.net``; a mask token is not part of
  it)::

      model = timm.create_model(meta["arch"], num_classes=0, **json.loads(meta["model_args"]))
      model.load_state_dict(safetensors.torch.load_file(path), strict=True)

- ``encoder.vit``: mapped onto timm's ``VisionTransformer`` (the same timm ``Block``s and ``PatchEmbed``); the
  fixed sin-cos table becomes timm's ``pos_embed`` with a zero row for the cls token (no position is added to
  cls, as in MAE), and pooling is kept: cls token (``global_pool='token'``) or the mean of the normalised
  patch tokens (``global_pool='avg', fc_norm=False``)::

      from timm.models.vision_transformer import VisionTransformer
      model = VisionTransformer(**json.loads(meta["timm_kwargs"]))
      model.load_state_dict(safetensors.torch.load_file(path), strict=True)

  ``model(x)`` then equals the block's ``pooled`` output at the training image size (timm interpolates the
  table at other sizes where the block recomputes it). Other encoder kinds (``encoder.beit``) are refused.

The metadata (``safetensors.safe_open(path, "pt").metadata()``) records ``format`` (timm or
timm_vision_transformer), ``arch`` / ``timm_kwargs``, the graph and the checkpoint's step. Before writing,
the weights are loaded into the timm model and its output compared with the block's on a random batch.
"""
from __future__ import annotations

from composer.runtime.errors import UserError
from composer.runtime.files import write_atomically


def timm_state(encoder, params: dict | None = None) -> tuple[dict, dict, object]:
    """(tensors, metadata, the timm model holding them) for an ``encoder.timm`` or ``encoder.vit`` block
    (``params``: the block's graph parameters, for ``model_args``)."""
    import json

    import timm

    kind = getattr(encoder, "kind", type(encoder).__name__)
    if kind in ("encoder.timm", "encoder.timm_vit"):
        args = dict((params or {}).get("model_args") or {})
        net = timm.create_model(encoder.arch, pretrained=False, num_classes=0, **args)
        tensors = {k: v.detach().clone().contiguous() for k, v in encoder.net.state_dict().items()}
        meta = {"format": "timm", "arch": encoder.arch, "model_args": json.dumps(args)}
    elif kind == "encoder.vit":
        kwargs, tensors = _vit_state(encoder)
        from timm.models.vision_transformer import VisionTransformer
        net = VisionTransformer(**kwargs)
        meta = {"format": "timm_vision_transformer", "timm_kwargs": json.dumps(kwargs)}
    else:
        raise UserError(f"export supports encoder.timm, encoder.timm_vit and encoder.vit embedding blocks, not {kind}")
    net.load_state_dict(tensors, strict=True)
    return tensors, meta, net


def _vit_state(encoder) -> tuple[dict, dict]:
    import torch

    blocks = encoder.blocks
    first = blocks[0] if len(blocks) else None
    img = encoder.patch_embed.img_size[0]
    has_cls = encoder.cls_token is not None
    kwargs = {
        "img_size": img, "patch_size": encoder.patch_size, "embed_dim": encoder.embed_dim, "depth": len(blocks),
        "num_heads": first.attn.num_heads if first is not None else 1,
        "mlp_ratio": first.mlp.fc1.out_features / encoder.embed_dim if first is not None else 4.0,
        "qkv_bias": True, "class_token": has_cls, "global_pool": "token" if has_cls else "avg", "fc_norm": False,
        "num_classes": 0, "dynamic_img_size": True,
    }
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items() if k != "pos_embed"}
    pos = encoder.pos_embed.detach()[None]                                     # (1, L, D)
    if has_cls:
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)           # (1, 1 + L, D)
    state["pos_embed"] = pos
    return kwargs, {k: v.contiguous() for k, v in state.items()}


def _verify(encoder, timm_model) -> None:
    """The timm model must reproduce the block's embedding (eval mode, a random batch at the training size)."""
    import torch

    from composer.evaluate.embed import Embed
    size = getattr(encoder, "patch_embed", None) or getattr(getattr(encoder, "net", None), "patch_embed", None)
    side = size.img_size[0] if size is not None else 32
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    embed = Embed(encoder)
    was = encoder.training
    embed.eval()
    timm_model.eval()
    with torch.no_grad():
        ours, theirs = embed(x), timm_model(x)
    encoder.train(was)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise UserError("export check failed: the timm model does not reproduce the encoder's output")


def export_embedding(model, output, checkpoint=None) -> dict:
    """Write ``model``'s embedding block to ``output`` (safetensors) after checking timm reproduces it → metadata."""
    from safetensors.torch import save

    from composer.blocks.teacher import EMATeacher
    name = model.spec.embedding
    if name is None:
        raise UserError("the graph names no 'embedding' block to export")
    encoder, params = model.embedding_module(), model.spec.blocks[name].params
    if isinstance(encoder, EMATeacher):
        # DINO names its teacher: export the averaged copy, built with its source block's parameters
        encoder, params = encoder.module, model.spec.blocks[params["source"]].params
    tensors, meta, timm_model = timm_state(encoder, params)
    meta.update({"graph": model.spec.name, "block": name, "checkpoint": str(checkpoint), "tensors": str(len(tensors))})
    _verify(encoder, timm_model)
    write_atomically(output, save(tensors, metadata=meta), "export")
    return meta
