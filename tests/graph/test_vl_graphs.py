"""The CLIP, SigLIP and GLIP graphs: they check, run, match hand-written forwards, and evaluate."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import composer
from composer.data import ShapesDataset, collate
from composer.evaluate import zeroshot

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
SMALL = {  # smaller than the tiny variants, for speed
    "clip": ["blocks.aug.size=32", "blocks.text_encoder.layers=1"],
    "siglip": ["blocks.aug.size=32", "blocks.text_encoder.layers=1"],
    "glip": ["blocks.aug.size=32", "blocks.targets.size=32", "blocks.text_encoder.layers=1"],
}


def _model(name: str):
    torch.manual_seed(0)
    spec = composer.load(GRAPHS / f"{name}.yaml", SMALL[name], "tiny")
    return composer.build(spec)


def _batch(model, n: int = 4, size: int = 32):
    data = ShapesDataset(n=n, size=size, seed=1)
    raw = collate([data[i] for i in range(n)])
    torch.manual_seed(0)
    return model.data_stage({k: raw[k] for k in model.spec.inputs})


@pytest.mark.parametrize("name", ["clip", "siglip", "glip"])
def test_full_size_graph_checks(name):
    spec = composer.load(GRAPHS / f"{name}.yaml")
    composer.check(spec)  # static checks and the dry run on the meta device (no weights allocated)
    assert spec.data["paper"]["arxiv"]
    assert "tiny" in spec.data["variants"]


def _towers(model, batch):
    img = model.image_proj(model.image_encoder(batch["x"]))
    txt = model.text_encoder(batch["text"].ids).pooled
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def test_clip_graph_is_clip():
    model = _model("clip")
    batch = _batch(model)
    out = model(batch)
    img, txt = _towers(model, batch)
    logits = math.exp(2.659260) * img @ txt.T  # openai/CLIP model.py · forward, scale 1/0.07 at init
    labels = torch.arange(len(img))
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert model.logit_scale.value.grad is not None
    assert all(p.grad is not None for p in model.text_encoder.parameters())
    with torch.no_grad():
        model.logit_scale.value.fill_(5.0)
    model.update(out, step=0)  # the clamp to ln 100 happens after the optimizer step
    assert math.isclose(float(model.logit_scale.value.detach()), math.log(100), rel_tol=1e-6)


def test_siglip_graph_is_siglip():
    model = _model("siglip")
    batch = _batch(model)
    out = model(batch)
    img, txt = _towers(model, batch)
    z = 10.0 * img @ txt.T - 10.0  # t = exp(log 10), b = -10 at init
    signs = 2 * torch.eye(len(img)) - 1
    expected = -F.logsigmoid(signs * z).sum() / len(img)  # a pair sum over the rows, not a mean over pairs
    torch.testing.assert_close(out.loss, expected, atol=1e-4, rtol=1e-5)
    assert model.text_encoder.attention == "bidirectional" and model.text_encoder.pool == "last"
    with torch.no_grad():
        model.logit_scale.value.fill_(7.0)
    model.update(out, step=0)
    assert float(model.logit_scale.value.detach()) == 7.0  # big_vision does not clamp the temperature


def test_glip_graph_runs_and_combines_its_losses():
    model = _model("glip")
    batch = _batch(model, n=4)
    out = model(batch)
    values = out.values
    torch.testing.assert_close(out.loss, values["token"] + 2.0 * values["giou"] + values["centerness"])
    assert values["target"].positive.sum() > 0
    assert values["pred"].logits.shape == values["target"].tokens.shape
    assert all(torch.isfinite(values[k]) for k in ("token", "giou", "centerness"))
    out.loss.backward()
    assert model.head.bias0.grad is not None and model.text_encoder.positional_embedding.grad is not None


def test_glip_graph_reads_mdetr_json(tmp_path):
    import numpy as np
    from PIL import Image

    from composer.data.spec import open_dataset
    for name, (h, w) in {"a.png": (40, 30), "b.png": (24, 48)}.items():  # sizes differ: a list of images
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    caption_a, caption_b = "A man holding a red umbrella.", "two dogs"
    ann = {"images": [{"id": 1, "file_name": "a.png", "caption": caption_a},
                      {"id": 2, "file_name": "b.png", "caption": caption_b}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": [2, 3, 10, 20], "tokens_positive": [[0, 5]]},
                           {"id": 2, "image_id": 1, "bbox": [12, 5, 15, 12], "tokens_positive": [[16, 28]]},
                           {"id": 3, "image_id": 2, "bbox": [0, 0, 20, 20], "tokens_positive": [[0, 8]]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    data = open_dataset(f"grounding:{tmp_path / 'ann.json'}")
    model = _model("glip")
    raw = collate([data[0], data[1]])
    model.data_stage.eval()  # no random flip
    batch = model.data_stage({k: raw[k] for k in model.spec.inputs})
    torch.testing.assert_close(batch["view"].boxes[0][0], torch.tensor([2 * 32 / 30, 3 * 32 / 40, 12 * 32 / 30,
                                                                         23 * 32 / 40]))  # rescaled to 32 x 32
    umbrella = batch["text"].positive[0][1].nonzero().flatten()
    assert bytes(int(batch["text"].ids[0, p]) for p in umbrella).decode() == "red umbrella"
    out = model(batch)
    assert torch.isfinite(out.loss)
    assert zeroshot.grounding_recall(model, data, batch_size=2)["phrases"] == 3


def test_zero_shot_matches_a_direct_computation():
    model = _model("clip")
    data = ShapesDataset(n=12, size=32, split="val")
    classes = ShapesDataset.classes
    templates = ("a photo of a {}.", "a {}")
    got = zeroshot.zero_shot_accuracy(model, data, classes, templates, batch_size=5)
    model.eval()
    with torch.no_grad():
        tokenizer = model.data_stage.graph_module.tokenizer
        weights = []
        for c in classes:
            t = F.normalize(model.text_encoder(tokenizer([f.format(c) for f in templates]).ids).pooled, dim=-1)
            weights.append(F.normalize(t.mean(0), dim=-1))
        raw = collate([data[i] for i in range(len(data))])
        x = (raw["image"].float() / 255 - torch.tensor(model.data_stage.graph_module.aug.mean)[:, None, None]) \
            / torch.tensor(model.data_stage.graph_module.aug.std)[:, None, None]  # 32 px: resize is the identity
        img = F.normalize(model.image_proj(model.image_encoder(x)), dim=-1)
        pred = (img @ torch.stack(weights).T).argmax(1)
    assert got == pytest.approx(float((pred == raw["label"]).float().mean()))


def test_grounding_recall_on_an_untrained_model():
    model = _model("glip")
    data = ShapesDataset(n=6, size=32, split="val")
    result = zeroshot.grounding_recall(model, data, batch_size=4)
    phrases = sum(len(data[i]["boxes"]) for i in range(len(data)))
    assert result["phrases"] == phrases  # every phrase of these short captions survives tokenisation
    assert 0.0 <= result["recall"] <= 1.0
    boxes = torch.cat([data[i]["boxes"] for i in range(len(data))])  # 32 px data, 32 px model: no resize
    prior = boxes.mean(0)
    ious = [float(_iou(prior, b)) for b in boxes]
    assert result["prior_box_recall"] == pytest.approx(sum(v >= 0.5 for v in ious) / len(ious))


def _iou(a, b):
    iw = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    ih = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.slow
def test_zeroshot_command_on_a_run(tmp_path, capsys):
    from composer.cli import main
    run = tmp_path / "run"
    args = ["train", str(GRAPHS / "clip.yaml"), "--variant", "tiny", "--data", "shapes:n=16,size=32",
            "--steps", "1", "--batch-size", "8", "--out", str(run), "--workers", "0", "--probe-every", "-1",
            "--no-progress"]
    for item in SMALL["clip"]:
        args += ["--set", item]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["zeroshot", str(run), "--n-val", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "classification" and result["chance"] == pytest.approx(0.1)
    assert 0.0 <= result["top1"] <= 1.0 and result["n_val"] == 10
