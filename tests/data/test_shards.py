"""WebDataset shards: writer ↔ reader round trip, brace patterns, damage, compatibility with ``webdataset``."""
from __future__ import annotations

import io
import tarfile
import warnings

import numpy as np
import pytest
import torch
from fault_helpers import replace_member
from PIL import Image

from composer.data.shapes import ShapesDataset
from composer.data.shards import ShardDataset, expand_pattern, pattern_of, write_shards
from composer.data.spec import open_dataset


@pytest.fixture(scope="module")
def source():
    return ShapesDataset(n=45, size=32, seed=3)


@pytest.fixture
def shards(tmp_path, source):
    paths = write_shards((source[i] for i in range(len(source))), tmp_path / "s", maxcount=10,
                         classes=list(source.classes))
    assert [p.name for p in paths] == [f"{i:05d}.tar" for i in range(5)]
    return paths


def _same(a: dict, b: dict) -> bool:
    return (torch.equal(a["image"], b["image"]) and a["label"] == b["label"] and a["caption"] == b["caption"]
            and torch.equal(a["boxes"], b["boxes"]) and a["tokens_positive"] == b["tokens_positive"])


def test_round_trip_through_the_spec(shards, source):
    data = open_dataset(f"wds:{pattern_of(shards)}")
    assert len(data) == 45 and data.classes == list(source.classes) and data.errors == 0
    assert all(_same(data[i], source[i]) for i in range(45))  # PNG: lossless


def test_jpeg_shards_decode_close_to_the_source(tmp_path, source):
    paths = write_shards((source[i] for i in range(5)), tmp_path / "j", fmt="jpg")
    data = ShardDataset(pattern_of(paths))
    err = (data[2]["image"].float() - source[2]["image"].float()).abs().mean()
    assert 0 < err < 8  # JPEG quality 95: lossy, close


@pytest.mark.parametrize("pattern", ["a/{000..012}.tar", "s{8..11}.tar", "x/{a,bb}-{01..03}.tar", "plain.tar",
                                     "a{3..1}.tar"])
def test_brace_patterns_match_braceexpand(pattern):
    braceexpand = pytest.importorskip("braceexpand")
    assert expand_pattern(pattern) == list(braceexpand.braceexpand(pattern))
    assert expand_pattern(pattern + "::z.tar") == [*braceexpand.braceexpand(pattern), "z.tar"]


def test_shards_read_by_webdataset(shards, source):
    wds = pytest.importorskip("webdataset")
    got = list(wds.WebDataset(str(pattern_of(shards)), shardshuffle=False, empty_check=False))
    assert len(got) == 45 and got[7]["__key__"] == "000000007" and got[7]["txt"].decode() == source[7]["caption"]
    image = np.asarray(Image.open(io.BytesIO(got[7]["png"])).convert("RGB"))
    assert torch.equal(torch.from_numpy(image.copy()).permute(2, 0, 1), source[7]["image"])


def _cut(path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_damage_is_skipped_with_a_warning_and_counted(shards, source):
    # shard 1: cut in the middle of a member (samples 10-12 survive); shard 3: an image that is not an image;
    # shard 4: cut exactly at a member boundary (no end-of-archive blocks): its last sample is left out
    with tarfile.open(shards[1]) as tar:
        members = tar.getmembers()
    fourth_image = next(m for m in members if m.name.startswith("000000013."))
    _cut(shards[1], fourth_image.offset_data + 20)
    with tarfile.open(shards[4]) as tar:
        last = tar.getmembers()[-1]
    _cut(shards[4], last.offset_data + -(-last.size // 512) * 512)
    replace_member(shards[3], "000000031.png", b"not a png at all")

    with pytest.warns(UserWarning, match="wds: skipped") as caught:
        data = ShardDataset(pattern_of(shards))
    assert data.errors == 2 and len(caught) == 2
    keys = [key for _, key, _ in data.samples]
    assert keys == [f"{i:09d}" for i in [*range(13), *range(20, 44)]]
    with pytest.warns(UserWarning, match="000000031.*stands in"):
        stand_in = data[keys.index("000000031")]
    assert _same(stand_in, source[32]) and data.errors == 3
    for i, key in enumerate(keys):
        if key != "000000031":
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert _same(data[i], source[int(key)])


def test_too_much_damage_and_missing_shards_are_one_line(tmp_path, shards):
    for p in shards:
        _cut(p, 100)
    with pytest.raises(ValueError, match="giving up after 2 damaged"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ShardDataset(pattern_of(shards), max_errors=1)
    with pytest.raises(FileNotFoundError) as err:
        open_dataset(f"wds:{tmp_path}/none/{{0..3}}.tar")
    assert "\n" not in str(err.value) and "4 of 4 shards missing" in str(err.value)
    with pytest.raises(ValueError, match="val=PATTERN"):
        open_dataset(f"wds:{pattern_of(shards)}", "val")


def test_ptc_shards_writes_both_splits_and_refuses_to_overwrite(tmp_path, capsys):
    from composer.cli import main
    out = tmp_path / "out"
    assert main(["shards", "shapes:n=25,size=16,seed=2", str(out), "--maxcount", "10", "--n-val", "7"]) == 0
    spec = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("data spec: ")
    assert spec == f"wds:{out}/train/{{00000..00002}}.tar,val={out}/val/00000.tar"
    train, val = open_dataset(spec, "train"), open_dataset(spec, "val")
    source = ShapesDataset(n=25, size=16, seed=2, split="val")
    assert len(train) == 25 and len(val) == 7 and _same(val[6], source[6])
    assert main(["shards", "shapes:n=25,size=16", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds shards" in err
