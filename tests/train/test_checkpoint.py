"""Checkpoints: atomic writes, weights_only reads, content checksums, and nothing lost to a corrupt file,
a truncated file or a full disk (each a one-line error)."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from fault_helpers import flip_bytes, one_error_line, remount, tmpfs
from train_helpers import DATA, MOCO, fast, losses

import composer
from composer.cli import main as ptc_main
from composer.train import checkpoint, train
from composer.train.checkpoint import CheckpointError, CorruptCheckpoint, NonFiniteState


class _Evil:
    """Unpickling this would run code: ``weights_only=True`` must refuse it."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran while loading')",))


def _state(value: float) -> dict:
    return {"format": checkpoint.FORMAT, "step": 1, "model": {"w": torch.full((3,), value)}}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = checkpoint.path_for(tmp_path, 5)
    checkpoint.save(path, _state(1.0))
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):  # the process dies halfway through writing
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, _state(2.0))
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.full((3,), 1.0))  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == [path.name]                    # no temporary left behind
    checkpoint.save(path, _state(3.0))
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.full((3,), 3.0))


def test_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read this checkpoint"):
        checkpoint.load(path)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pretext-composer checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_prune_and_latest(tmp_path):
    for step in (3, 10, 7):
        checkpoint.save(checkpoint.path_for(tmp_path, step), _state(step))
    assert checkpoint.latest(tmp_path).name == "step-00000010.pt"
    checkpoint.prune(tmp_path, 2)
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path)] == [7, 10]
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        checkpoint.resolve(tmp_path / "checkpoints")


def _cli(out, steps: int, *extra) -> list[str]:
    return ["train", MOCO, "--set", "train.batch_size=8", "--steps", str(steps), "--data", DATA, "--out", str(out),
            "--workers", "0", "--threads", "1", "--device", "cpu", "--no-progress", "--probe-every", "-1", *extra]


def test_truncated_checkpoint_gives_one_line_and_the_previous_one_survives(tmp_path, capsys):
    out = tmp_path / "run"
    spec = composer.load(MOCO, {"train.batch_size": 8, "train.steps": 6})
    train(spec, fast(out, ckpt_every=2))
    capsys.readouterr()
    older, newest = checkpoint.list_checkpoints(out)          # steps 4 and 6
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])   # truncated by a failing disk
    args = _cli(out, 6, "--resume")
    assert ptc_main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(newest) in line and "cannot read this checkpoint" in line
    assert f"the newest intact checkpoint is {older}: pass --fallback" in line
    assert checkpoint.load(older)["step"] == 4
    # removing the broken file, as the message says, resumes from step 4 and finishes the run
    newest.unlink()
    before = losses(out)
    assert ptc_main(args) == 0
    after = losses(out)
    assert [s for s, _ in after] == [1, 2, 3, 4, 5, 6]
    assert after[:4] == before[:4]
    assert checkpoint.load(checkpoint.latest(out))["step"] == 6


def test_digest_changes_with_any_byte_and_survives_a_round_trip(tmp_path):
    state = {"format": checkpoint.FORMAT, "step": 3,
             "model": {"w": torch.randn(4, 5), "h": torch.randn(3).bfloat16(), "n": torch.tensor(7),
                       "empty": torch.zeros(0), "mask": torch.tensor([True, False])},
             "optimizer": {"state": {0: {"momentum_buffer": torch.randn(4, 5)}}, "param_groups": [{"lr": 0.1}]}}
    path = checkpoint.save(tmp_path / "a.pt", state)
    loaded = checkpoint.load(path)
    assert loaded["checksum"] == checkpoint.digest(state) == checkpoint.digest(loaded)
    for change in (lambda s: s["model"]["w"].view(torch.int32)[1, 2].bitwise_xor_(1),   # one bit of a weight
                   lambda s: s["model"]["h"].view(torch.int16)[0].bitwise_xor_(1 << 14),
                   lambda s: s["optimizer"]["state"][0]["momentum_buffer"].neg_(),
                   lambda s: s["optimizer"]["param_groups"][0].update(lr=0.2),
                   lambda s: s.update(step=4)):
        copy = checkpoint.load(path)
        change(copy)
        assert checkpoint.digest(copy) != loaded["checksum"]


def test_flipped_tensor_bytes_are_refused_and_fallback_resumes_from_the_intact_one(tmp_path, capsys):
    out = tmp_path / "run"
    train(composer.load(MOCO, {"train.batch_size": 8, "train.steps": 6}), fast(out, ckpt_every=2))
    capsys.readouterr()
    before = losses(out)
    older, newest = checkpoint.list_checkpoints(out)          # steps 4 and 6
    intact = torch.load(newest, weights_only=True)
    flip_bytes(newest)
    damaged = newest.read_bytes()
    raw = torch.load(newest, weights_only=True)               # torch alone reads the damaged file silently ...
    assert raw["step"] == 6 and any(not torch.equal(raw["model"][k], intact["model"][k]) for k in intact["model"])
    with pytest.raises(CorruptCheckpoint, match="no longer matches its checksum"):   # ... the checksum does not
        checkpoint.load(newest)

    assert ptc_main(_cli(out, 6, "--resume")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"{newest}: corrupt checkpoint") and f"newest intact checkpoint is {older}" in line
    assert ptc_main(["eval", str(out), "--n-train", "16", "--n-val", "16"]) == 2
    assert f"pass --checkpoint {older}" in one_error_line(capsys.readouterr().err)
    assert ptc_main(["export", str(out), "-o", str(tmp_path / "enc.safetensors")]) == 2
    assert f"pass --checkpoint {older}" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "enc.safetensors").exists()

    # --fallback: on from step 4, the damaged file kept aside byte for byte; the run repeats the same losses
    assert ptc_main(_cli(out, 6, "--resume", "--fallback")) == 0
    err = capsys.readouterr().err
    assert f"resuming from the newest intact checkpoint {older}" in err
    assert newest.with_name(newest.name + ".corrupt").read_bytes() == damaged
    after = losses(out)
    assert [s for s, _ in after] == [1, 2, 3, 4, 5, 6]
    assert torch.allclose(torch.tensor([v for _, v in after]), torch.tensor([v for _, v in before]), atol=1e-6)
    assert checkpoint.load(newest)["step"] == 6


def test_a_full_disk_while_writing_a_checkpoint_loses_nothing(tmp_path, capsys, monkeypatch):
    """A 12 MiB tmpfs holds two tiny-MoCo checkpoints (4.6 MB each) but not the third's temporary file.
    Where mounting is not allowed, the third write raises ENOSPC through a patched writer instead."""
    disk, real = tmp_path / "disk", checkpoint._write
    with tmpfs(disk, "12m") as mounted:
        if not mounted:
            calls = []

            def full(state, f):
                calls.append(1)
                if len(calls) >= 3:
                    f.write(b"PK\x03\x04 half a zip")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real(state, f)
            monkeypatch.setattr(checkpoint, "_write", full)
        out = disk / "run"
        args = _cli(out, 5, "--ckpt-every", "1")
        assert ptc_main(args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"{checkpoint.path_for(out, 3)}: cannot write the checkpoint")
        assert "No space left on device [ENOSPC]" in line and "nothing was replaced" in line
        kept = checkpoint.list_checkpoints(out)
        assert [checkpoint.step_of(p) for p in kept] == [1, 2] and all(checkpoint.verified(p) for p in kept)
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary file
        assert [s for s, _ in losses(out)] == [1, 2, 3]
        # space freed: the run resumes from step 2 and finishes
        if mounted:
            remount(disk, "64m")
        else:
            monkeypatch.setattr(checkpoint, "_write", real)
        assert ptc_main([*args, "--resume"]) == 0
        assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5]
        assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(out)] == [4, 5]


def test_non_finite_weights_are_never_written(tmp_path):
    path = checkpoint.save(tmp_path / "a.pt", _state(1.0))
    infinite_momentum = {"state": {0: {"m": torch.tensor([1.0, -float("inf")])}}}
    for bad in (_state(float("nan")), {**_state(1.0), "optimizer": infinite_momentum}):
        with pytest.raises(NonFiniteState, match="hold NaN or infinity"):
            checkpoint.save(path, bad)
        with pytest.raises(NonFiniteState):
            checkpoint.save(tmp_path / "b.pt", bad)
    assert not (tmp_path / "b.pt").exists()
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.full((3,), 1.0))


def test_rotation_keeps_the_newest_and_the_one_before(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(checkpoint.path_for(tmp_path, step), _state(step))
    checkpoint.prune(tmp_path, 1, newest=checkpoint.path_for(tmp_path, 3))
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path)] == [2, 3]  # 2: the last proven
    # a run resumed from step 1 of a folder that still holds step 3: the later file is not counted nor deleted
    checkpoint.save(checkpoint.path_for(tmp_path, 1), _state(1))
    checkpoint.prune(tmp_path, 1, newest=checkpoint.path_for(tmp_path, 1))
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path)] == [1, 2, 3]
    checkpoint.prune(tmp_path, 0)
    assert len(checkpoint.list_checkpoints(tmp_path)) == 3  # keep 0: keep all


def test_checkpoint_of_another_graph_is_refused(tmp_path):
    out = tmp_path / "run"
    train(composer.load(MOCO, {"train.batch_size": 8, "train.steps": 2}), fast(out))
    other = composer.load(MOCO, {"train.batch_size": 8, "train.steps": 4, "blocks.projector.dims": "[96, 32, 8]",
                                 "blocks.queue.dim": 8})
    with pytest.raises(CheckpointError, match="does not match this graph"):
        train(other, fast(out, resume=True))
