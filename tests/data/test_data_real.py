"""Real-data loaders on tiny files written into tmp_path: image folders, CIFAR, STL-10, caption CSV,
grounding JSON, and the data-spec parser."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from composer.data import (
    CIFAR10,
    CIFAR100,
    STL10,
    CaptionCSV,
    GroundingJSON,
    ImageFolderDataset,
    collate,
    open_dataset,
    read_image,
)


def _pixels(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path, array: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)


# ---------------------------------------------------------------- images and folders

def test_read_image_png_bmp_and_grayscale(tmp_path):
    rgb = _write(tmp_path / "a.png", _pixels(0, 5, 7))
    assert torch.equal(read_image(tmp_path / "a.png"), _chw(rgb))
    bmp = _write(tmp_path / "b.bmp", _pixels(1, 4, 6))
    out = read_image(tmp_path / "b.bmp")
    assert out.dtype == torch.uint8 and torch.equal(out, _chw(bmp))
    gray = _write(tmp_path / "g.png", _pixels(2, 3, 3)[:, :, 0])
    out = read_image(tmp_path / "g.png")
    assert out.shape == (3, 3, 3) and all(torch.equal(out[c], torch.from_numpy(gray)) for c in range(3))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_image_folder_with_and_without_split_folders(tmp_path):
    written = {}
    for split in ("train", "val"):
        for c, name in enumerate(["cat", "dog"]):
            for k in range(2):
                written[(split, name, k)] = _write(tmp_path / split / name / f"{k}.png", _pixels(c * 10 + k, 6, 5))
    train = ImageFolderDataset(tmp_path, split="train")
    assert train.classes == ["cat", "dog"] and len(train) == 4
    for i in range(4):
        s = train[i]
        name = train.classes[s["label"]]
        k = int(os.path.basename(train.folder.samples[i][0])[0])
        assert set(s) == {"image", "label"} and torch.equal(s["image"], _chw(written[("train", name, k)]))
    assert len(open_dataset(f"folder:{tmp_path}", split="val")) == 4
    flat = ImageFolderDataset(tmp_path / "train", split="val")  # no val/ inside: the folder itself
    assert flat.classes == ["cat", "dog"] and len(flat) == 4
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderDataset(tmp_path / "nope")


# ---------------------------------------------------------------- CIFAR and STL-10

def _cifar_images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _pickle(path, obj, protocol):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.fixture
def cifar10_root(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    batches = []
    for i in range(1, 6):
        images, labels = _cifar_images(i, 2), [i % 10, (i + 3) % 10]
        _pickle(base / f"data_batch_{i}", {"data": images.reshape(2, -1), "labels": labels}, protocol=2 + i % 4)
        batches.append((images, labels))
    test = _cifar_images(9, 3)
    _pickle(base / "test_batch", {"data": test.reshape(3, -1), "labels": [0, 1, 2]}, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(base / "batches.meta", {"label_names": names}, protocol=2)
    return tmp_path, batches, test, names


def test_cifar10_fake_layout(cifar10_root):
    root, batches, test, names = cifar10_root
    train = CIFAR10(root)
    assert len(train) == 10 and train.classes == names
    images = np.concatenate([b[0] for b in batches])
    labels = [y for b in batches for y in b[1]]
    for i in range(10):
        s = train[i]
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 32, 32)
        assert torch.equal(s["image"], torch.from_numpy(images[i])) and s["label"] == labels[i]
    for split in ("val", "test"):
        held_out = CIFAR10(root / "cifar-10-batches-py", split=split)  # the inner folder works too
        assert len(held_out) == 3 and torch.equal(held_out[2]["image"], torch.from_numpy(test[2]))
    assert len(open_dataset(f"cifar10:{root}", split="val")) == 3
    batch = collate([train[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].tolist() == labels[:4]


def test_cifar_missing_files_name_the_path_and_never_download(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        CIFAR10(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent"):
        open_dataset(f"cifar10:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match="split"):
        CIFAR10(tmp_path, split="unlabeled")


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    base = tmp_path / "cifar-10-batches-py"
    _pickle(base / "data_batch_1", {"data": Evil(), "labels": []}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        CIFAR10(tmp_path)


def test_cifar100_fake_layout(tmp_path):
    base = tmp_path / "cifar-100-python"
    images = _cifar_images(0, 4)
    _pickle(base / "train", {"data": images.reshape(4, -1), "fine_labels": [5, 99, 0, 7],
                             "coarse_labels": [1, 2, 3, 4]}, protocol=2)
    _pickle(base / "test", {"data": images[:1].reshape(1, -1), "fine_labels": [3], "coarse_labels": [0]}, 2)
    _pickle(base / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2)
    train = open_dataset(f"cifar100:{tmp_path}")
    assert isinstance(train, CIFAR100) and len(train.classes) == 100
    assert [train[i]["label"] for i in range(4)] == [5, 99, 0, 7]
    assert torch.equal(train[1]["image"], torch.from_numpy(images[1]))
    assert len(CIFAR100(tmp_path, split="test")) == 1


def test_stl10_fake_layout_is_read_column_major(tmp_path):
    base = tmp_path / "stl10_binary"
    base.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    images.transpose(0, 1, 3, 2).tofile(base / "train_X.bin")  # the published files are column-major
    np.array([1, 10, 4], np.uint8).tofile(base / "train_y.bin")
    images[:2].transpose(0, 1, 3, 2).tofile(base / "unlabeled_X.bin")
    (base / "class_names.txt").write_text("\n".join(STL10.default_classes) + "\n")
    train = STL10(tmp_path)
    assert len(train) == 3 and train.classes == STL10.default_classes
    assert [train[i]["label"] for i in range(3)] == [0, 9, 3]
    assert torch.equal(train[1]["image"], torch.from_numpy(images[1]))
    unlabeled = STL10(base, split="unlabeled")
    assert len(unlabeled) == 2 and unlabeled[1]["label"] == -1
    with pytest.raises(FileNotFoundError, match="test_X.bin"):
        open_dataset(f"stl10:{tmp_path}", split="val")


# ---------------------------------------------------------------- captions and grounding

def test_caption_csv(tmp_path):
    a = _write(tmp_path / "imgs" / "a.png", _pixels(0, 4, 4))
    b = _write(tmp_path / "elsewhere" / "b.png", _pixels(1, 5, 3))
    (tmp_path / "data.csv").write_text(
        'filepath,caption\n'
        'imgs/a.png,"a dog, running"\n'
        f'{tmp_path / "elsewhere" / "b.png"},a "quoted" cat\n')
    ds = CaptionCSV(tmp_path / "data.csv")
    assert len(ds) == 2 and ds.classes == []
    s0, s1 = ds[0], ds[1]
    assert s0["caption"] == "a dog, running" and torch.equal(s0["image"], _chw(a)) and s0["label"] == -1
    assert s1["caption"] == 'a "quoted" cat' and torch.equal(s1["image"], _chw(b))
    batch = collate([s0, s1])
    assert isinstance(batch["image"], list) and batch["caption"] == [s0["caption"], s1["caption"]]


def test_caption_csv_open_clip_columns_and_errors(tmp_path):
    _write(tmp_path / "a.png", _pixels(0, 2, 2))
    (tmp_path / "oc.tsv").write_text("filepath\ttitle\na.png\tsome title\nmissing.png\tgone\n")
    ds = open_dataset(f"csv:{tmp_path / 'oc.tsv'},caption_key=title,sep=\\t")
    assert ds[0]["caption"] == "some title"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ds[1]
    with pytest.raises(ValueError, match="title"):  # the error lists the header it found
        CaptionCSV(tmp_path / "oc.tsv", sep="\t")
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        CaptionCSV(tmp_path / "nothere.csv")


def _grounding(tmp_path, spans_b=((10, 13),)):
    _write(tmp_path / "images" / "1.png", _pixels(0, 20, 30))
    _write(tmp_path / "images" / "2.png", _pixels(1, 10, 10))
    data = {
        "images": [
            {"id": 1, "file_name": "1.png", "caption": "a man with a red hat", "height": 20, "width": 30},
            {"id": 2, "file_name": "2.png", "caption": "an empty room", "height": 10, "width": 10},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [2, 3, 10, 5], "tokens_positive": [[2, 5]], "category_id": 1},
            {"id": 11, "image_id": 1, "bbox": [15.5, 1, 4, 6], "tokens_positive": [list(s) for s in spans_b]},
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    path = tmp_path / "ann" / "final.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_grounding_json(tmp_path):
    path = _grounding(tmp_path, spans_b=((13, 16), (17, 20)))
    ds = open_dataset(f"grounding:{path},images={tmp_path / 'images'}")
    assert isinstance(ds, GroundingJSON) and len(ds) == 2
    s = ds[0]
    assert s["image"].shape == (3, 20, 30) and s["label"] == -1
    assert torch.equal(s["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [15.5, 1.0, 19.5, 7.0]]))
    assert s["tokens_positive"] == [[[2, 5]], [[13, 16], [17, 20]]]
    assert s["caption"][2:5] == "man" and [s["caption"][a:b] for a, b in s["tokens_positive"][1]] == ["red", "hat"]
    empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["tokens_positive"] == []


def test_grounding_errors(tmp_path):
    bad = _grounding(tmp_path, spans_b=((15, 99),))
    with pytest.raises(ValueError, match="outside its caption"):
        GroundingJSON(bad, images=tmp_path / "images")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        GroundingJSON(tmp_path / "nothing.json")
    good = _grounding(tmp_path)
    ds = GroundingJSON(good)  # images default to the JSON's folder, where they are not
    with pytest.raises(FileNotFoundError, match="1.png"):
        ds[0]


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("spec, message", [
    ("shapez", "did you mean 'shapes'"),
    ("cifar01:/x", "did you mean 'cifar10'"),
    ("imagenet:/x", "unknown kind 'imagenet'"),
    ("shapes:sise=32", "did you mean 'size'"),
    ("shapes:n=ten", "bad value for n"),
    ("shapes:n", "expected key=value"),
    ("folder:", "needs a path"),
    ("grounding:images=/x", "needs a path"),
    ("cifar10:/x,download=maybe", "true or false"),
])
def test_bad_specs_give_one_line_value_errors(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        open_dataset(spec)
    assert "\n" not in str(info.value)


def test_collate_rejects_mismatched_or_unknown_fields():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="sample 1"):
        collate([{"image": image, "label": 0}, {"image": image}])
    with pytest.raises(ValueError, match="unknown fields"):
        collate([{"image": image, "mask": image}])
    with pytest.raises(ValueError, match="empty"):
        collate([])
