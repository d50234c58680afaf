"""Labelled image datasets from local files: image folders, CIFAR-10/100, STL-10.

Every dataset returns raw samples ``{"image": uint8 (3, H, W), "label": int}`` and exposes ``classes``.
Nothing is downloaded unless ``download=True`` is passed; torchvision then fetches (and checks) the archive,
and the files are read here. CIFAR and STL-10 are read directly from their published layouts rather than through
torchvision's classes, which re-hash every file on each construction; CIFAR's pickles are opened with an
unpickler that only admits NumPy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from composer.data.faults import SampleError

_EVAL_SPLITS = ("val", "test")  # both name the held-out split of datasets that publish one


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to uint8 RGB (3, H, W) with PIL (grayscale, palette and alpha images become RGB).

    PIL rather than ``torchvision.io``, whose decoders are deprecated from torchvision 0.29.

    Raises:
        FileNotFoundError: no such file.
        SampleError: the file cannot be read or decoded (truncated, not an image, an I/O error); one line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"))  # (H, W, 3), a copy that owns its memory
    except Exception as e:  # PIL's decoders raise OSError, SyntaxError, struct.error ... on damaged bytes
        first = (str(e).strip().splitlines() or [""])[0]
        raise SampleError(path, f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_encoded(path: str | os.PathLike) -> torch.Tensor:
    """The bytes of an image file as a uint8 (N,) tensor, for decoding later (on the training device)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def decode_images(encoded: list[torch.Tensor], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Decode encoded images (uint8 (N_i,) CPU tensors) to uint8 RGB (3, H_i, W_i) on ``device``.

    On CUDA, JPEGs are decoded in one batched nvJPEG call (``torchvision.io.decode_jpeg(list, device=...)``);
    other formats, and every image on a CPU, go through ``torchvision.io.decode_image`` (libjpeg-turbo, libpng).
    torchvision 0.29 deprecates these decoders in favour of TorchCodec (>= 0.16) but still ships them; the
    warning is silenced here (one per worker and call would flood the log).
    """
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
        device, rgb = torch.device(device), ImageReadMode.RGB
        if device.type != "cuda":
            return [decode_image(e, mode=rgb) for e in encoded]
        jpeg = [i for i, e in enumerate(encoded) if len(e) > 2 and e[0] == 0xFF and e[1] == 0xD8]
        out: list = [None] * len(encoded)
        for i, img in zip(jpeg, decode_jpeg([encoded[i] for i in jpeg], mode=rgb, device=device) if jpeg else []):
            out[i] = img
        return [img if img is not None else decode_image(e, mode=rgb).to(device) for img, e in zip(out, encoded)]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder not found: {path}")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path} (pass download=True to fetch the dataset)")
    return path


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/<image>`` (torchvision ``ImageFolder``); classes are the sorted folder names.

    If ``root/<split>`` is a folder (the ImageNet layout ``train/``, ``val/``), it is used; otherwise ``root``
    itself, for every split.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", decode: str = "workers") -> None:
        if decode not in ("workers", "device"):
            raise ValueError(f"folder: decode must be 'workers' or 'device', got {decode!r}")
        self.decode = decode  # "device": samples carry the file bytes as "encoded" (decoded by the trainer)
        root = _require_dir(Path(root), "image folder")
        if (root / split).is_dir():
            root = root / split
        self.folder = torchvision.datasets.ImageFolder(str(root))  # lists files; decoding is read_image's
        self.classes = list(self.folder.classes)

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.folder.samples[index]
        if self.decode == "device":
            return {"encoded": read_encoded(path), "label": int(label)}
        return {"image": read_image(path), "label": int(label)}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the globals that pickled NumPy arrays need, nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f, encoding="latin1").load()


class _CIFAR(Dataset):
    """CIFAR from its python layout: pickled dicts with ``data`` (N, 3072) uint8 and a label list."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: type

    def __init__(self, root: str | os.PathLike, split: str = "train", download: bool = False) -> None:
        if split != "train" and split not in _EVAL_SPLITS:
            raise ValueError(f"{type(self).__name__}: split must be 'train', 'val' or 'test', got {split!r}")
        root = Path(root)
        if download:
            self.torchvision_class(str(root), train=split == "train", download=True)
        _require_dir(root, type(self).__name__)
        base = root / self.folder if (root / self.folder).is_dir() else root  # also accept the inner folder
        files = self.train_files if split == "train" else self.test_files
        data, labels = [], []
        for name in files:
            entry = _load_pickle(_require_file(base / name, type(self).__name__))
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(y) for y in entry[self.label_key])
        self.data = np.concatenate(data)
        self.labels = labels
        self.classes = list(_load_pickle(_require_file(base / self.meta_file, type(self).__name__))[self.names_key])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.from_numpy(self.data[index].copy()), "label": self.labels[index]}


class CIFAR10(_CIFAR):
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or that folder itself): 50000 train / 10000 test, 32x32."""

    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    torchvision_class = torchvision.datasets.CIFAR10


class CIFAR100(_CIFAR):
    """CIFAR-100 (fine labels) from ``root/cifar-100-python`` (or that folder itself)."""

    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    torchvision_class = torchvision.datasets.CIFAR100


class STL10(Dataset):
    """STL-10 from ``root/stl10_binary`` (or that folder itself): 96x96, splits train, test (or val), unlabeled.

    ``*_X.bin`` holds uint8 images stored column-major per channel, read through a memory map (the unlabeled
    split is 2.7 GB); ``*_y.bin`` holds labels 1..10. Unlabeled samples have label -1.
    """

    folder = "stl10_binary"
    default_classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]

    def __init__(self, root: str | os.PathLike, split: str = "train", download: bool = False) -> None:
        if split not in ("train", "unlabeled", *_EVAL_SPLITS):
            raise ValueError(f"STL10: split must be 'train', 'val', 'test' or 'unlabeled', got {split!r}")
        name = "test" if split in _EVAL_SPLITS else split
        root = Path(root)
        if download:
            torchvision.datasets.STL10(str(root), split=name, download=True)
        _require_dir(root, "STL10")
        base = root / self.folder if (root / self.folder).is_dir() else root
        images = np.memmap(_require_file(base / f"{name}_X.bin", "STL10"), dtype=np.uint8, mode="r")
        self.data = images.reshape(-1, 3, 96, 96)
        if name == "unlabeled":
            self.labels = None
        else:
            raw = np.fromfile(_require_file(base / f"{name}_y.bin", "STL10"), dtype=np.uint8)
            self.labels = [int(y) - 1 for y in raw]
            if len(self.labels) != len(self.data):
                raise ValueError(f"STL10: {len(self.data)} images but {len(self.labels)} labels in {base}")
        names = base / "class_names.txt"
        self.classes = names.read_text().split() if names.is_file() else list(self.default_classes)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        image = torch.from_numpy(np.ascontiguousarray(self.data[index].transpose(0, 2, 1)))  # column-major
        return {"image": image, "label": -1 if self.labels is None else self.labels[index]}
