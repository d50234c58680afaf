"""The training loop on one process: run folder, schedules, monitors, accumulation, NaN stop, eval and export."""
from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import DATA, MOCO, MOCO_DIST, SIMCLR, fast, final_model, losses

import composer
from composer.cli import main as ptc_main
from composer.runtime.schedules import Schedule
from composer.train import TrainError, checkpoint, train
from composer.train.runlog import read_metrics


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    """6 LARS steps of tiny SimCLR (batch 16 of 64 images: 4 steps per epoch), probed every 3 steps."""
    out = tmp_path_factory.mktemp("runs") / "simclr"
    spec = composer.load(SIMCLR, {"train.epochs": None, "train.steps": 6})
    train(spec, fast(out, tensorboard=True, check=True, probe_every=3, probe_train=32, probe_val=16))
    return out


def test_run_folder(simclr_run):
    names = {p.name for p in simclr_run.iterdir()}
    assert {"graph.yaml", "run.json", "metrics.jsonl", "tb", "checkpoints"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (simclr_run / "tb").iterdir())
    again = composer.load(simclr_run / "graph.yaml")             # the resolved graph rebuilds the same model
    assert again.train["steps"] == 6 and "variants" not in again.data
    assert set(composer.build(again, check=False).state_dict()) == set(final_model(simclr_run))
    # checkpoints at the end of epoch 1 (step 4) and of the run (step 6), the newest 2 kept
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(simclr_run)] == [4, 6]
    assert json.loads((simclr_run / "run.json").read_text())["data"] == DATA


def test_lr_follows_the_schedule_per_step(simclr_run):
    # lr: {cosine: [1.2, 0.0], warmup: 2} with sqrt scaling for batch 16: x sqrt(16/256) = x 0.25
    sched = Schedule.parse({"cosine": [1.2, 0.0], "warmup": 2}).bind(6, 4)
    logged = [(m["step"], m["lr"]) for m in read_metrics(simclr_run) if "lr" in m]
    assert [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]
    for step, lr in logged:  # the metrics row of step s was taken with the lr of optimizer step s - 1
        assert math.isclose(lr, 0.25 * sched.at(step - 1), rel_tol=1e-9, abs_tol=1e-12)
    assert all(m["weight_decay"] == 1e-4 for m in read_metrics(simclr_run) if "weight_decay" in m)


def test_probe_and_collapse_monitors_are_logged(simclr_run):
    rows = read_metrics(simclr_run)
    assert [m["step"] for m in rows if "probe/knn" in m] == [0, 3, 6]
    assert all(0.0 <= m["probe/knn"] <= 1.0 for m in rows if "probe/knn" in m)
    mon = [m for m in rows if "collapse/std" in m]
    assert len(mon) == 6
    for m in mon:  # test_resnet embeddings: 96 dims, 32 rows (2 views x 16)
        assert 0.0 < m["collapse/std"] <= 1.0 and 1.0 <= m["collapse/rank"] <= 32.0
        assert math.isclose(m["collapse/std_ratio"], m["collapse/std"] * math.sqrt(96), rel_tol=1e-6)
        assert math.isfinite(m["loss"]) and m["throughput/images_per_s"] > 0


def test_collapse_monitors_on_known_embeddings():
    from composer.train.monitor import effective_rank, embedding_std
    assert embedding_std(torch.ones(8, 4)) == 0.0                   # one point: collapsed
    assert math.isclose(effective_rank(torch.ones(8, 4)), 1.0, rel_tol=1e-4)
    assert math.isclose(effective_rank(torch.eye(4)), 4.0, rel_tol=1e-4)   # equal singular values: full rank
    z = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert abs(embedding_std(z) - 1 / math.sqrt(16)) < 0.01           # spread over the sphere: 1/sqrt(D)


def test_accumulation_equals_the_full_batch(tmp_path):
    """Two micro-batches of 4 and one batch of 8 give the same training (per-row loss, a queue, no BN)."""
    base = {**MOCO_DIST, "train.batch_size": 8, "train.steps": 3, "train.lr": 0.5}
    train(composer.load(MOCO, base), fast(tmp_path / "full"))
    train(composer.load(MOCO, {**base, "train.accumulate": 2}), fast(tmp_path / "accum"))
    a, b = losses(tmp_path / "full"), losses(tmp_path / "accum")
    assert [s for s, _ in a] == [1, 2, 3]
    assert torch.allclose(torch.tensor([v for _, v in a]), torch.tensor([v for _, v in b]), atol=1e-5)
    ma, mb = final_model(tmp_path / "full"), final_model(tmp_path / "accum")
    for key in ma:
        assert torch.allclose(ma[key].float(), mb[key].float(), atol=1e-5), key
    assert int(ma["queue.ptr"]) == 8  # 3 steps x 8 keys in a queue of 16


def test_nan_loss_at_the_first_step_names_no_good_checkpoint(tmp_path):
    """lr 1e30: the first step moves the weights to ~1e29; the loss of step 1 (on those weights) is NaN. The
    checkpoint of step 1 holds them: it is set aside, never named as the last good one."""
    spec = composer.load(MOCO, {"train.lr": 1e30, "train.batch_size": 8, "train.steps": 10})
    with pytest.raises(TrainError) as info:
        train(spec, fast(tmp_path / "nan", ckpt_every=1))
    message = str(info.value)
    assert "the loss is nan at step 1" in message and "before the optimizer step" in message
    assert "Last good checkpoint: none (no checkpoint before step 1)" in message
    assert checkpoint.list_checkpoints(tmp_path / "nan") == []
    aside = checkpoint.path_for(tmp_path / "nan", 1).with_suffix(".pt.diverged")
    assert aside.name in message
    weights = torch.load(aside, weights_only=True)["model"]
    assert max(float(v.abs().max()) for v in weights.values() if v.is_floating_point() and v.numel()) > 1e20


def test_existing_run_needs_resume(simclr_run, capsys):
    code = ptc_main(["train", SIMCLR, "--out", str(simclr_run), "--data", DATA, "--steps", "6", "--workers", "0",
                     "--device", "cpu", "--no-progress", "--probe-every", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pass --resume" in err[0]


def test_eval_and_export_of_a_timm_encoder(tmp_path, capsys):
    """ptc eval and ptc export on a short run of a graph whose encoder is a timm model with model_args."""
    out = tmp_path / "vit"
    train(composer.load(SIMCLR, {"train.epochs": None, "train.steps": 2}, variant="dist"), fast(out))
    assert ptc_main(["eval", str(out), "--probe", "knn", "--n-train", "32", "--n-val", "16", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert ptc_main(["eval", str(out), "--random-init", "--n-train", "32", "--n-val", "16", "--json"]) == 0
    init = json.loads(capsys.readouterr().out)
    assert 0 <= trained["top1"] <= 1 and init["weights"] == "random initialisation" and trained["n_val"] == 16

    target = tmp_path / "encoder.safetensors"
    assert ptc_main(["export", str(out), "-o", str(target)]) == 0
    with safe_open(str(target), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "timm" and meta["arch"] == "test_vit"
    model = timm.create_model(meta["arch"], num_classes=0, **json.loads(meta["model_args"]))
    model.load_state_dict(load_file(str(target)), strict=True)
    ours = composer.build(composer.load(out / "graph.yaml"), check=False)
    checkpoint.load_model_state(ours, checkpoint.load(checkpoint.latest(out)), out)
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    ours.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), ours.embedding_module()(x), atol=1e-5)


def test_eval_and_export_read_the_block_named_by_embedding(tmp_path, capsys):
    """DINO's graph names its teacher (eval_knn.py's default ``--checkpoint_key teacher``): ``ptc export`` writes
    the teacher's averaged weights, not the student's; ``ptc eval --embedding`` probes any block; at
    initialisation the teacher is a copy of the student, so both score the same; an unknown block is one line."""
    from composer.train.runlog import write_run_files
    spec = composer.load("graphs/dino.yaml", variant="tiny")
    assert spec.embedding == "teacher_encoder"
    write_run_files(tmp_path, spec, {"seed": 0, "data": "shapes:n=64,size=32"})
    scores = {}
    for block in ("encoder", "teacher_encoder"):
        args = ["eval", str(tmp_path), "--random-init", "--embedding", block, "--n-train", "48", "--n-val", "32"]
        assert ptc_main([*args, "--json"]) == 0
        scores[block] = json.loads(capsys.readouterr().out)["top1"]
    assert scores["encoder"] == scores["teacher_encoder"]
    assert ptc_main(["eval", str(tmp_path), "--random-init", "--embedding", "teacher"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'teacher' is not a block" in err[0] and "teacher_encoder" in err[0]
    assert ptc_main(["eval", str(tmp_path), "--random-init", "--embedding", "head", "--n-train", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "block 'head' cannot embed the probe's images" in err[0]

    model = composer.build(spec, check=False)
    with torch.no_grad():  # a teacher that differs from its student, as after training
        for p in model.teacher_encoder.module.parameters():
            p.add_(torch.randn_like(p))
    checkpoint.save(checkpoint.path_for(tmp_path, 1), {"format": checkpoint.FORMAT, "step": 1,
                                                        "model": model.state_dict()})
    target = tmp_path / "teacher.safetensors"
    assert ptc_main(["export", str(tmp_path), "-o", str(target)]) == 0
    exported = load_file(str(target))
    teacher, student = model.teacher_encoder.module.net.state_dict(), model.encoder.net.state_dict()
    assert exported.keys() == teacher.keys()
    assert all(torch.equal(exported[k], teacher[k]) for k in teacher)
    convs = [k for k, v in student.items() if v.dim() == 4]
    assert convs and not any(torch.equal(exported[k], student[k]) for k in convs)


@pytest.mark.parametrize("cls_token", [True, False])
def test_export_of_encoder_vit_loads_strictly_into_timm(cls_token):
    from timm.models.vision_transformer import VisionTransformer

    from composer.blocks.vit import ViTEncoder
    from composer.evaluate.export import timm_state
    enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, cls_token=cls_token).eval()
    tensors, meta, _ = timm_state(enc)
    model = VisionTransformer(**json.loads(meta["timm_kwargs"])).eval()
    model.load_state_dict(tensors, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), enc(x).pooled, atol=1e-5)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert ptc_main(["eval", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0]
    assert ptc_main(["train", SIMCLR, "--data", "shapez", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'shapes'" in err[0]
