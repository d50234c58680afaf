"""WebDataset shards: the ``wds:`` data spec's reader and ``ptc shards``' writer (own ``tarfile`` code).

Format (webdataset, img2dataset, open_clip): a shard is a plain tar; consecutive members sharing a key form one
sample; the key is the member path up to the first dot of its base name, the rest is the extension
(``000123.jpg``, ``000123.txt``). Keys read here, as img2dataset writes and open_clip reads them: the image
under ``jpg`` / ``jpeg`` / ``png`` / ``webp``, the caption under ``txt``, a class index under ``cls``, and a
``json`` whose ``boxes`` ([[x0, y0, x1, y1], ...] pixels) and ``tokens_positive`` (per box, [start, end)
character spans of the caption) make a grounding sample. Class names, when known, are in ``classes.txt``
next to the first shard (one per line).

Reading. ``ShardDataset`` indexes the shards once (tar headers only: member offsets and sizes, no image is
read) and then reads any sample by seeking to its members. So it is an ordinary map-style dataset, and the
training loop's sampler gives it what it gives every dataset: each sample exactly once per epoch over all
ranks and DataLoader workers, and an exact mid-epoch resume from the step stored in the checkpoint (the
sampler's order is a function of the seed, the epoch and the step). Only local paths are read; random access
costs one seek per member, which local disks absorb (``python tools/bench.py shards`` compares it with the
image-folder reader); streaming from remote storage is not supported.

Damage never stops a run: a shard cut short keeps the samples completed before the cut, a sample missing its
image or caption is left out of the index, and an image that does not decode is replaced by the next sample
of the dataset that does. Each is one ``UserWarning`` starting "wds:" and one count in ``errors``.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


# ---------------------------------------------------------------- shard lists

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_pattern(pattern: str | os.PathLike) -> list[str]:
    """Shard paths of a brace pattern: ``"a/{000..002}.tar"`` → a/000.tar, a/001.tar, a/002.tar (zero padding
    kept, as braceexpand does); ``{x,y}`` lists alternatives; ``::`` joins several patterns."""
    out: list[str] = []
    for part in str(pattern).split("::"):
        m = _BRACE.search(part)
        if m is None:
            out.append(part)
            continue
        body, head, tail = m.group(1), part[:m.start()], part[m.end():]
        r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
        if r:
            a, b = int(r.group(1)), int(r.group(2))
            width = len(r.group(1)) if r.group(1).startswith("0") and len(r.group(1)) > 1 else 0
            step = 1 if b >= a else -1
            choices = [str(i).zfill(width) for i in range(a, b + step, step)]
        else:
            choices = body.split(",")
        for choice in choices:
            out += expand_pattern(head + choice + tail)
    return out


# ---------------------------------------------------------------- writing

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: identical inputs, identical shards
    tar.addfile(info, io.BytesIO(data))


def encode_image(image: torch.Tensor, fmt: str) -> bytes:
    """uint8 (3, H, W) → PNG (lossless) or JPEG (quality 95, img2dataset's default) bytes."""
    buf = io.BytesIO()
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    pil.save(buf, "PNG" if fmt == "png" else "JPEG", **({} if fmt == "png" else {"quality": 95}))
    return buf.getvalue()


def sample_members(sample: dict, fmt: str = "png") -> dict[str, bytes]:
    """A raw dataset sample (``image``, ``label``, ``caption``, ``boxes``, ``tokens_positive``) → tar members."""
    members = {fmt: encode_image(sample["image"], fmt)}
    if sample.get("caption") is not None:
        members["txt"] = str(sample["caption"]).encode("utf-8")
    if int(sample.get("label", -1)) >= 0:
        members["cls"] = str(int(sample["label"])).encode()
    if "boxes" in sample:
        members["json"] = json.dumps({"boxes": torch.as_tensor(sample["boxes"]).tolist(),
                                      "tokens_positive": sample.get("tokens_positive", [])}).encode()
    return members


def write_shards(samples: Iterable[dict], folder: str | os.PathLike, maxcount: int = 1000,
                 fmt: str = "png", classes: list[str] | None = None) -> list[Path]:
    """Write raw samples to ``folder/00000.tar``, ``00001.tar`` … (at most ``maxcount`` each); returns the paths.

    Keys are the running sample number (``%09d``, img2dataset's naming); ``classes`` go to ``classes.txt``.
    """
    if fmt not in ("png", "jpg"):
        raise ValueError(f"shards: image format must be png or jpg, got {fmt!r}")
    if maxcount < 1:
        raise ValueError(f"shards: maxcount must be >= 1, got {maxcount}")
    out, tar, paths = Path(folder), None, []
    out.mkdir(parents=True, exist_ok=True)
    try:
        for n, sample in enumerate(samples):
            if n % maxcount == 0:
                if tar is not None:
                    tar.close()
                paths.append(out / f"{len(paths):05d}.tar")
                tar = tarfile.open(paths[-1], "w", format=tarfile.USTAR_FORMAT)
            for ext, data in sample_members(sample, fmt).items():
                _add(tar, f"{n:09d}.{ext}", data)
    finally:
        if tar is not None:
            tar.close()
    if classes:
        (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return paths


def pattern_of(paths: list[Path]) -> str:
    """The brace pattern naming ``paths`` as ``write_shards`` numbers them."""
    if len(paths) == 1:
        return str(paths[0])
    return str(paths[0].parent / f"{{{paths[0].stem}..{paths[-1].stem}}}.tar")


# ---------------------------------------------------------------- reading

def _split(name: str) -> tuple[str, str]:
    """(key, extension): the extension starts at the first dot of the base name (webdataset's rule)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class Member(NamedTuple):
    offset: int  # byte offset of the member's data in the tar
    size: int


class ShardDataset(Dataset):
    """Raw samples ``{"image" uint8 (3, H, W), "label", "caption"[, "boxes", "tokens_positive"]}`` from shards.

    Args:
        pattern: shard paths as a brace pattern (``shards/{00000..00099}.tar``; ``::`` joins patterns).
        max_errors: damaged shards / samples tolerated before giving up with one ValueError line.
    """

    def __init__(self, pattern: str, max_errors: int = 1000):
        self.paths = expand_pattern(pattern)
        if not self.paths:
            raise ValueError(f"wds: no shards in {pattern!r}")
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"wds: shard not found: {missing[0]} ({len(missing)} of {len(self.paths)} "
                                    f"shards missing)")
        self.max_errors, self.errors = max_errors, 0
        self.samples: list[tuple[int, str, dict[str, Member]]] = []  # (shard, key, ext → member)
        for shard, path in enumerate(self.paths):
            self._index(shard, path)
        if not self.samples:
            raise ValueError(f"wds: no usable samples in {pattern!r} (each needs an image and a txt or cls)")
        names = Path(self.paths[0]).parent / "classes.txt"
        self.classes = names.read_text(encoding="utf-8").splitlines() if names.is_file() else []
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def _bad(self, what: str) -> None:
        self.errors += 1
        if self.errors > self.max_errors:
            raise ValueError(f"wds: giving up after {self.errors} damaged shards or samples "
                             f"(max_errors={self.max_errors}); last: {what}")
        warnings.warn(f"wds: skipped {what} ({self.errors} so far)", stacklevel=3)

    def _keep(self, shard: int, path: str, key: str, members: dict[str, Member]) -> None:
        if any(e in members for e in IMAGE_EXTS) and ("txt" in members or "cls" in members):
            self.samples.append((shard, key, members))
        else:
            self._bad(f"{path} sample {key}: no image or no txt/cls (has {sorted(members)})")

    def _index(self, shard: int, path: str) -> None:
        """Members of each sample, from the tar headers; a cut or damaged tar keeps its complete samples."""
        size = os.path.getsize(path)
        key, members, end = None, {}, 0
        try:
            with tarfile.open(path, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    k, ext = _split(info.name)
                    if k != key:  # the previous sample is complete
                        if key is not None:
                            self._keep(shard, path, key, members)
                        key, members = k, {}
                    if info.offset_data + info.size > size:
                        raise tarfile.ReadError(f"member {info.name} is cut short")
                    members[ext] = Member(info.offset_data, info.size)
                    end = info.offset_data + info.size
        except (tarfile.TarError, OSError, EOFError) as exc:
            where = f"from sample {key}" if key is not None else "from its start"
            self._bad(f"the rest of {path} {where}: {type(exc).__name__}: {exc}".replace("\n", " "))
            return  # the sample being read when the damage started is incomplete: left out
        if key is not None:
            # tar ends with two zero blocks; without them the file was cut at a member boundary and the last
            # sample may be missing members: leave it out (webdataset would yield it silently)
            if size < -(-end // 512) * 512 + 1024:
                self._bad(f"the last sample of {path} ({key}): the tar has no end-of-archive blocks (cut short?)")
            else:
                self._keep(shard, path, key, members)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, path: str, member: Member) -> bytes:
        if self._pid != os.getpid():  # a forked DataLoader worker: file offsets must not be shared
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        f.seek(member.offset)
        return f.read(member.size)

    def decode(self, index: int) -> dict:
        shard, key, members = self.samples[index]
        path = self.paths[shard]
        ext = next(e for e in IMAGE_EXTS if e in members)
        with Image.open(io.BytesIO(self._read(path, members[ext]))) as img:
            pixels = np.asarray(img.convert("RGB"))
        sample = {"image": torch.from_numpy(pixels.copy()).permute(2, 0, 1),
                  "label": int(self._read(path, members["cls"])) if "cls" in members else -1,
                  "caption": self._read(path, members["txt"]).decode("utf-8") if "txt" in members else ""}
        if "json" in members:
            meta = json.loads(self._read(path, members["json"]))
            if "boxes" in meta:
                sample["boxes"] = torch.tensor(meta["boxes"], dtype=torch.float32).reshape(-1, 4)
                sample["tokens_positive"] = meta.get("tokens_positive", [])
        return sample

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"wds: index {index} out of range for {len(self.samples)} samples")
        for step in range(min(len(self.samples), self.max_errors + 1)):
            i = (index + step) % len(self.samples)
            try:
                return self.decode(i)
            except Exception as exc:  # PIL raises many types; one bad image must not stop a run
                shard, key, _ = self.samples[i]
                self._bad(f"{self.paths[shard]} sample {key} ({type(exc).__name__}: {exc}); "
                          f"the next sample stands in".replace("\n", " "))
        raise ValueError(f"wds: no decodable sample near index {index}")
