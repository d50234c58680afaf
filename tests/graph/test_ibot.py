"""iBOT (graphs/ibot.yaml) against the official code (bytedance/ibot) and lightly 1.6.0: the loss program, the
masked ViT, the block masks, the centres, the temperature and momentum schedules, the optimizer step, and two gloo
processes against one on the global batch.

The official formulas are written out below from main_ibot.py · iBOTLoss.forward / update_center, loader.py ·
ImageFolderMask and utils.py · cosine_scheduler, get_params_groups, clip_gradients, cancel_gradients_last_layer.
"""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dist_helpers import sgd_record, spawn
from schedule_helpers import dino_cosine_scheduler
from torch.nn.parallel import DistributedDataParallel as DDP

import composer
from composer.blocks.encoders import TimmViTEncoder
from composer.blocks.expr.block import ExpressionLoss
from composer.blocks.masking import BlockwiseMasking
from composer.graph.shapes import example_batch
from composer.graph.train_section import parse_train
from composer.train.optim import (
    build_optimizer,
    clip_gradients,
    freeze_gradients,
    set_hyperparameters,
)

GRAPH = "graphs/ibot.yaml"
STUDENT_TEMP = 0.1


def _build(overrides=None, variant="tiny"):
    torch.manual_seed(0)
    return composer.build(composer.load(GRAPH, overrides, variant), check=False)


def official_ibot_loss(s_cls, s_local, s_patch, t_cls, t_patch, masks, center, center2, temp, temp2):
    """main_ibot.py · iBOTLoss.forward on crop-major concatenations (lambda1 = lambda2 = 1).

    s_cls/t_cls (G, B, K), s_local (L, B, K), s_patch/t_patch (G, B, N, K), masks (G, B, N)."""
    g = t_cls.shape[0]
    student_cls = (torch.cat([s_cls, s_local]) / STUDENT_TEMP).flatten(0, 1).chunk(g + s_local.shape[0])
    student_patch = (s_patch / STUDENT_TEMP).flatten(0, 1).chunk(g)
    teacher_cls = F.softmax((t_cls.flatten(0, 1) - center) / temp, dim=-1).detach().chunk(g)
    teacher_patch = F.softmax((t_patch.flatten(0, 1) - center2) / temp2, dim=-1).detach().chunk(g)
    total1 = total2 = 0
    n1 = n2 = 0
    for q in range(len(teacher_cls)):
        for v in range(len(student_cls)):
            if v == q:
                loss2 = torch.sum(-teacher_patch[q] * F.log_softmax(student_patch[v], dim=-1), dim=-1)
                mask = masks[v]
                loss2 = torch.sum(loss2 * mask.float(), dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
                total2 += loss2.mean()
                n2 += 1
            else:
                total1 += torch.sum(-teacher_cls[q] * F.log_softmax(student_cls[v], dim=-1), dim=-1).mean()
                n1 += 1
    return total1 / n1 + total2 / n2


def official_update_center(center, center2, t_cls, t_patch, momentum=0.9):
    """main_ibot.py · iBOTLoss.update_center on one process: t_cls (G·B, K), t_patch (G·B, N, K)."""
    cls_center = torch.sum(t_cls, dim=0, keepdim=True) / len(t_cls)
    patch_center = torch.sum(t_patch.mean(1), dim=0, keepdim=True) / len(t_patch)
    return center * momentum + cls_center * (1 - momentum), center2 * momentum + patch_center * (1 - momentum)


def _expr_of_graph() -> ExpressionLoss:
    return ExpressionLoss(expr=composer.load(GRAPH).blocks["ibot_loss"].params["expr"])


def _random_loss_inputs(gen, g=2, n_local=3, b=4, n=6, k=7, dtype=torch.float64):
    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale
    masks = (torch.rand(g, b, n, generator=gen) < 0.4).to(dtype)
    masks[0, 1] = 0  # an unmasked crop (ratio 0, half of the README recipe's crops): the clamp keeps it at 0
    return {"sc": r(g, b, k), "sl": r(n_local, b, k), "sp": r(g, b, n, k), "tc": r(g, b, k, scale=0.3),
            "tp": r(g, b, n, k, scale=0.3), "m": masks, "c": r(1, k, scale=0.1), "c2": r(1, k, scale=0.1),
            # powers of two: lightly turns the temperature into a float32 tensor, these convert exactly
            "tt": torch.tensor(0.0625, dtype=dtype), "tpt": torch.tensor(0.078125, dtype=dtype)}


def _lightly_ibot(x):
    """lightly 1.6.0: DINOLoss on the cls tokens (every view pair but the diagonal), IBOTPatchLoss per global crop
    on the flattened masked tokens (one call is one view: the crops are averaged here), centres set by hand."""
    from lightly.loss import DINOLoss, IBOTPatchLoss
    k = x["sc"].shape[-1]
    dino = DINOLoss(output_dim=k, warmup_teacher_temp_epochs=0, student_temp=STUDENT_TEMP).double()
    dino.center.copy_(x["c"].reshape(1, 1, k))
    cls = dino(teacher_out=list(x["tc"]), student_out=list(torch.cat([x["sc"], x["sl"]])),
               teacher_temp=float(x["tt"]))
    patch = 0
    g, b, n = x["m"].shape
    for q in range(g):
        fresh = IBOTPatchLoss(output_dim=k, student_temp=STUDENT_TEMP).double()  # it updates its centre in forward
        fresh.center.center.copy_(x["c2"])
        sel = x["m"][q].bool()
        patch = patch + fresh(x["tp"][q][sel], x["sp"][q][sel], sel.reshape(b, n, 1), teacher_temp=float(x["tpt"]))
    return cls + patch / g


@pytest.mark.parametrize("n_local", [3, 0])
def test_loss_program_equals_the_official_formula_and_lightly_in_value_and_gradient(n_local):
    x = _random_loss_inputs(torch.Generator().manual_seed(n_local), n_local=n_local)
    program = _expr_of_graph()
    results = []
    for reference in ("program", "official", "lightly"):
        leaves = {k: v.clone().requires_grad_(k in ("sc", "sl", "sp")) for k, v in x.items()}
        if reference == "program":  # the compiled program itself, in float64 (the block's forward casts to float32)
            loss = program._evaluate(leaves)
        elif reference == "official":
            loss = official_ibot_loss(leaves["sc"], leaves["sl"], leaves["sp"], leaves["tc"], leaves["tp"],
                                      leaves["m"], leaves["c"], leaves["c2"], float(x["tt"]), float(x["tpt"]))
        else:
            loss = _lightly_ibot(leaves)
        loss.backward()
        results.append((loss.detach(), [leaves[k].grad for k in ("sc", "sl", "sp")]))
    (ours, grads), others = results[0], results[1:]
    assert ours.dtype == torch.float64 and grads[2].abs().sum() > 0
    # lightly's patch weights 1/#masked are float32 (a bool mask's count clamped with a float): 1e-7 relative
    for (value, their_grads), rtol in zip(others, (1e-10, 1e-7)):
        torch.testing.assert_close(ours, value, rtol=rtol, atol=1e-12)
        for a, b in zip(grads, their_grads):
            torch.testing.assert_close(a, b, rtol=rtol * 10, atol=1e-12)
    # only masked patches carry the patch term: an unmasked crop's patch logits get no gradient
    assert grads[2][0, 1].abs().sum() == 0


def test_the_built_graph_computes_the_official_loss_from_its_own_values():
    """The wiring: which crops and tokens reach which term, the pre-update centres, the temperatures."""
    model = _build()
    model.bind_schedules(100, 10)
    model.eval()  # no drop path in the student, so it can be compared with the teacher below
    spec = composer.load(GRAPH, None, "tiny")
    with torch.no_grad():
        model.center.center.normal_(0, 0.1)
        model.center2.center.normal_(0, 0.1)
    c, c2 = model.center.center.clone(), model.center2.center.clone()
    torch.manual_seed(1)
    random.seed(1)
    out = model(model.data_stage(example_batch(spec, n=5)))
    v = out.values
    m = v["masks"].mask
    assert m.shape == (2, 5, 64) and set(m.unique().tolist()) <= {0.0, 1.0}
    expected = official_ibot_loss(v["s"][:, :, 0], v["s_local"], v["s"][:, :, 1:], v["t"][:, :, 0], v["t"][:, :, 1:],
                                  m, c, c2, 0.04, 0.04)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    # at step 0 the teacher is the student: it saw the crops unmasked, the student saw them masked
    assert torch.allclose(v["ht"].tokens, model.encoder(v["crops"].global_crops).tokens, atol=1e-5)
    assert not torch.allclose(v["ht"].tokens, v["h"].tokens, atol=1e-3)


def test_centres_follow_the_official_update_over_several_steps():
    model = _build()
    model.bind_schedules(100, 10)
    spec = composer.load(GRAPH, None, "tiny")
    ref_c, ref_c2 = torch.zeros(1, 512), torch.zeros(1, 1, 512)
    for step in range(3):
        torch.manual_seed(step)
        with torch.no_grad():
            out = model(model.data_stage(example_batch(spec, n=4)))
        t = out.values["t"]
        ref_c, ref_c2 = official_update_center(ref_c, ref_c2, t[:, :, 0].flatten(0, 1), t[:, :, 1:].flatten(0, 1))
        model.update(out, step)
        torch.testing.assert_close(model.center.center, ref_c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.center2.center, ref_c2.reshape(1, -1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref_c, ref_c2.reshape(1, -1), atol=1e-3)  # two different centres


def test_teacher_temperatures_are_the_official_per_epoch_tables():
    """iBOTLoss.__init__: np.linspace(0.04, 0.07, 30) over the first 30 epochs, then 0.07 (cls and patch)."""
    model = _build(variant=None)
    epochs, ipe = 40, 2
    model.bind_schedules(epochs * ipe, ipe)
    table = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(epochs - 30) * 0.07))
    for step in range(epochs * ipe):
        for block in (model.teacher_temp, model.teacher_patch_temp):
            assert float(block()) == pytest.approx(table[step // ipe], abs=1e-7), step
            block.update(step)


def test_both_teachers_follow_the_official_cosine_momentum_step_by_step():
    model = _build()
    epochs, ipe = 3, 4
    model.bind_schedules(epochs * ipe, ipe)
    momenta = dino_cosine_scheduler(0.996, 1, epochs, ipe)
    for teacher in (model.teacher_encoder, model.teacher_head):
        ref = [p.detach().clone() for p in teacher.module.parameters()]
        for step in range(epochs * ipe):
            with torch.no_grad():
                for p in teacher.source.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            teacher.update(step)
            m = float(momenta[step])
            ref = [m * r + (1 - m) * s.detach() for r, s in zip(ref, teacher.source.parameters())]
            for got, want in zip(teacher.module.parameters(), ref):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_one_optimizer_step_equals_the_official_groups_schedules_clip_and_freeze():
    """utils.get_params_groups (decay on ndim > 1 and not .bias), AdamW with lr/wd from cosine_scheduler (lr
    5e-4·1024/256, warm-up 10 epochs, min 1e-6; wd 0.04 → 0.4 on the first group only), clip_gradients 3.0 per
    tensor, cancel_gradients_last_layer during epoch 0; checked at an iteration in epoch 0 and one after."""
    cfg = parse_train(composer.load(GRAPH))               # the full recipe's train section ...
    epochs, ipe = 100, 2
    lr_s = dino_cosine_scheduler(0.0005 * 1024 / 256, 1e-6, epochs, ipe, warmup_epochs=10)
    # known deviation: lr_scaling multiplies the whole schedule, so the floor is 1e-6·1024/256, not 1e-6
    lr_floor_scaled = dino_cosine_scheduler(0.0005 * 1024 / 256, 1e-6 * 1024 / 256, epochs, ipe, warmup_epochs=10)
    assert np.abs(lr_floor_scaled - lr_s).max() <= 3e-6
    wd_s = dino_cosine_scheduler(0.04, 0.4, epochs, ipe)
    lr_sched, wd_sched = cfg.lr.bind(epochs * ipe, ipe), cfg.weight_decay.bind(epochs * ipe, ipe)
    for it in (1, 57):
        model = _build()                                   # ... on the tiny networks
        ours = build_optimizer(model, cfg)
        student = {n: p for n, p in model.named_parameters() if p.requires_grad}
        twin = copy.deepcopy(model)
        theirs_params = {n: p for n, p in twin.named_parameters() if p.requires_grad}
        regularized = [p for n, p in theirs_params.items() if not (n.endswith(".bias") or p.ndim == 1)]
        not_regularized = [p for n, p in theirs_params.items() if n.endswith(".bias") or p.ndim == 1]
        theirs = torch.optim.AdamW([{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}])
        gen = torch.Generator().manual_seed(it)
        for name, p in student.items():
            p.grad = torch.randn(p.shape, generator=gen) * (10.0 if "blocks.0" in name else 0.1)
            theirs_params[name].grad = p.grad.clone()
        # ours, as composer/train/loop.py runs a step
        lr = lr_sched.at(it) * cfg.lr_factor()
        warm = 10 * ipe
        # known deviation: np.linspace(0, base, W) reaches base at iteration W - 1, the trainer's warm-up at W, so
        # during warm-up the lr is (W - 1) / W of the official one (W = 12510 at 1251 iterations per epoch)
        assert lr == pytest.approx(lr_floor_scaled[it] * ((warm - 1) / warm if it < warm else 1.0), rel=1e-9)
        assert wd_sched.at(it) == pytest.approx(wd_s[it], rel=1e-9)
        set_hyperparameters(ours, lr, wd_sched.at(it))
        frozen = [part for part, until in cfg.freeze.items() if it < until.steps(ipe)]
        if frozen:
            freeze_gradients(ours, frozen)
        clip_gradients([p for g in ours.param_groups for p in g["params"]], *cfg.clip_grad)
        ours.step()
        # official
        for i, group in enumerate(theirs.param_groups):
            group["lr"] = lr
            if i == 0:
                group["weight_decay"] = wd_s[it]
        for p in theirs_params.values():
            norm = p.grad.data.norm(2)
            clip_coef = 3.0 / (norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
        if it // ipe < 1:
            for n, p in theirs_params.items():
                if "last_layer" in n:
                    p.grad = None
        theirs.step()
        assert (it // ipe < 1) == bool(frozen)
        for name, p in student.items():
            torch.testing.assert_close(p, theirs_params[name], rtol=1e-6, atol=1e-8, msg=f"{it}: {name}")
        start = dict(_build().named_parameters())
        moved = {n for n, p in student.items() if not torch.equal(p, start[n])}
        assert any("last_layer" in n for n in moved) == (it // ipe >= 1)


def official_block_mask(h, w, high, aspect=(0.3, 1 / 0.3)):
    """loader.py · ImageFolderMask.__getitem__, pred_shape 'block', with Python's random module."""
    log_aspect = tuple(math.log(a) for a in aspect)
    mask = np.zeros((h, w), dtype=bool)
    mask_count = 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for _ in range(10):
            low = (min(h, w) // 3) ** 2
            target_area = random.uniform(low, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*log_aspect))
            bh = int(round(math.sqrt(target_area * aspect_ratio)))
            bw = int(round(math.sqrt(target_area / aspect_ratio)))
            if bw < w and bh < h:
                top = random.randint(0, h - bh)
                left = random.randint(0, w - bw)
                num_masked = mask[top: top + bh, left: left + bw].sum()
                if 0 < bh * bw - num_masked <= max_mask_patches:
                    for i in range(top, top + bh):
                        for j in range(left, left + bw):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask


def official_pred_ratio(pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2)):
    """loader.py · ImageFolderMask.get_pred_ratio for a list of ratios."""
    drawn = [random.uniform(m - v, m + v) if v > 0 else m for m, v in zip(pred_ratio, pred_ratio_var)]
    return random.choice(drawn)


def test_block_masks_are_the_official_ones_draw_for_draw():
    masker = BlockwiseMasking(patch_size=16, min_num_patches=16, ratio=[0.0, 0.3], ratio_var=[0.0, 0.2])
    random.seed(5)
    out = masker(torch.zeros(2, 12, 3, 224, 224))       # (G, B) crops, one draw each, crop-major
    random.seed(5)
    want = [official_block_mask(14, 14, official_pred_ratio() * 196) for _ in range(24)]
    assert out.mask.shape == (2, 12, 196)
    assert torch.equal(out.mask.reshape(24, 196), torch.tensor(np.stack(want).reshape(24, 196)).float())
    counts = out.mask.sum(-1).flatten()
    assert (counts == 0).any() and (counts > 0).any() and counts.max() <= int(0.5 * 196)
    assert out.index.shape == (2, 12, 98) and torch.equal(out.valid.sum(-1), out.mask.sum(-1))


def test_masked_vit_replaces_patch_embeddings_before_the_position_embedding():
    """models/vision_transformer.py · prepare_tokens: x[mask] = masked_embed on the patch embeddings, then cls
    and position; reproduced through timm's own forward_features with a hook on its patch embedding."""
    torch.manual_seed(0)
    enc = TimmViTEncoder(arch="test_vit", model_args={"img_size": 32, "patch_size": 8, "depth": 2},
                         mask_token=True)
    with torch.no_grad():
        enc.mask_token.normal_()
    enc.eval()
    image = torch.randn(2, 3, 3, 32, 32)
    mask = (torch.rand(2, 3, 16) < 0.5).float()
    out = enc(image, mask)
    assert out.tokens.shape == (2, 3, 17, 64) and out.pooled.shape == (2, 3, 64)
    flat_mask = mask.reshape(6, 16).bool()

    def replace(module, args, x):  # (B, h, w, D) with dynamic_img_size
        x = x.clone()
        x.reshape(6, 16, -1)[flat_mask] = enc.mask_token.reshape(-1)
        return x
    handle = enc.net.patch_embed.register_forward_hook(replace)
    ref = enc.net.forward_features(image.reshape(6, 3, 32, 32))
    handle.remove()
    torch.testing.assert_close(out.tokens.reshape(6, 17, 64), ref)
    torch.testing.assert_close(out.pooled.reshape(6, 64), ref[:, 0])
    plain = enc(image)
    torch.testing.assert_close(plain.tokens.reshape(6, 17, 64), enc.net.forward_features(image.reshape(6, 3, 32, 32)))
    out.tokens.sum().backward()
    assert enc.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mask_token"):
        TimmViTEncoder(arch="test_vit", model_args={"img_size": 32, "patch_size": 8})(image[0], mask[0])


# ------------------------------------------------------------------------------ two processes against one

WORLD, N, STEPS = 2, 4, 2
DIST = {"blocks.aug.global_size": 32, "blocks.aug.local_size": 16,
        "blocks.encoder.model_args": "{img_size: 32, patch_size: 8, embed_dim: 64, depth: 1, num_heads: 2, "
                                     "drop_path_rate: 0.0}",
        "blocks.head.in_dim": 64, "blocks.head.out_dim": 32, "blocks.head.hidden_dim": 32, "blocks.head.bottleneck_dim": 16,
        "blocks.center.dim": 32, "blocks.center2.dim": 32}


def _global_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    crops = torch.randn(2, WORLD * N, 3, 32, 32, generator=g), torch.randn(2, WORLD * N, 3, 16, 16, generator=g)
    mask = (torch.rand(2, WORLD * N, 16, generator=g) < 0.4).float()
    mask[1, 0] = 0  # one unmasked crop
    return crops, mask


def _batch_at(model_stage_template, rank):
    def batch_at(step):
        (glob, loc), mask = _global_batch(step)
        rows = slice(None) if rank is None else slice(rank * N, (rank + 1) * N)
        crops = model_stage_template["crops"]._replace(global_crops=glob[:, rows], local_crops=loc[:, rows])
        masks = model_stage_template["masks"]._replace(mask=mask[:, rows])
        return {"crops": crops, "masks": masks}
    return batch_at


def _template(model):
    spec = composer.load(GRAPH, DIST, "tiny")
    return model.data_stage(example_batch(spec, n=1))


def _dist_worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    model = _build(DIST)
    model.bind_schedules(10, 5)
    model.train()
    record = sgd_record(model, DDP(model, broadcast_buffers=False), _batch_at(_template(model), rank), STEPS)
    torch.save(record, f"{out_dir}/ibot-rank{rank}.pt")


@pytest.mark.dist
def test_two_processes_give_the_loss_gradients_and_centres_of_one_on_the_global_batch(tmp_path):
    spawn(_dist_worker, WORLD, str(tmp_path))
    model = _build(DIST)
    model.bind_schedules(10, 5)
    model.train()
    reference = sgd_record(model, model, _batch_at(_template(model), None), STEPS)
    ranks = [torch.load(tmp_path / f"ibot-rank{r}.pt") for r in range(WORLD)]
    for step in range(STEPS):
        ref = reference[step]
        local = torch.stack([r[step]["loss"] for r in ranks])
        torch.testing.assert_close(local.mean(), ref["loss"], rtol=1e-5, atol=1e-6)
        for param, grad in ref["grads"].items():
            if "last_layer" not in param:  # the weight-norm gain of a fresh head can get exactly 0
                assert grad.abs().sum() > 0, f"{param} got no gradient, the comparison would be vacuous"
            for r in ranks:
                torch.testing.assert_close(r[step]["grads"][param], grad, rtol=1e-4, atol=1e-6,
                                           msg=f"step {step}: {param}")
    for key, value in reference[-1]["state"].items():  # students, teachers, both centres, temperatures
        for r in ranks:
            torch.testing.assert_close(r[-1]["state"][key].float(), value.float(), rtol=1e-4, atol=1e-5,
                                       msg=key)
    assert reference[-1]["state"]["center2.center"].abs().sum() > 0


def test_export_writes_the_teacher_vit_as_a_timm_model(tmp_path):
    import json

    import timm
    from safetensors.torch import load_file

    from composer.evaluate.export import export_embedding
    model = _build()
    meta = export_embedding(model, tmp_path / "ibot.safetensors")   # checks timm reproduces the teacher's pooled
    assert meta["format"] == "timm" and meta["arch"] == "test_vit" and meta["block"] == "teacher_encoder"
    net = timm.create_model("test_vit", pretrained=False, num_classes=0, **json.loads(meta["model_args"]))
    net.load_state_dict(load_file(tmp_path / "ibot.safetensors"), strict=True)   # no mask token in the file
