"""Checkpoints: atomic writes, weights_only reads, and a clear error for a corrupt file."""
from __future__ import annotations

import pytest
import torch
from train_helpers import DATA, MOCO, fast, losses

import composer
from composer.cli import main as ptc_main
from composer.train import checkpoint, train
from composer.train.checkpoint import CheckpointError


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


def test_corrupt_checkpoint_gives_a_clear_error_and_the_previous_one_survives(tmp_path, capsys):
    out = tmp_path / "run"
    spec = composer.load(MOCO, {"train.batch_size": 8, "train.steps": 6})
    train(spec, fast(out, ckpt_every=2))
    capsys.readouterr()
    older, newest = checkpoint.list_checkpoints(out)          # steps 4 and 6
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])   # truncated by a failing disk
    args = ["train", MOCO, "--set", "train.batch_size=8", "--steps", "6", "--data", DATA, "--out", str(out),
            "--workers", "0", "--threads", "1", "--device", "cpu", "--no-progress", "--probe-every", "-1", "--resume"]
    assert ptc_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(newest) in err[0] and "cannot read this checkpoint" in err[0]
    assert f"the previous checkpoint {older} is intact" in err[0]
    assert checkpoint.load(older)["step"] == 4
    # removing the broken file, as the message says, resumes from step 4 and finishes the run
    newest.unlink()
    before = losses(out)
    assert ptc_main(args) == 0
    after = losses(out)
    assert [s for s, _ in after] == [1, 2, 3, 4, 5, 6]
    assert after[:4] == before[:4]
    assert checkpoint.load(checkpoint.latest(out))["step"] == 6


def test_checkpoint_of_another_graph_is_refused(tmp_path):
    out = tmp_path / "run"
    train(composer.load(MOCO, {"train.batch_size": 8, "train.steps": 2}), fast(out))
    other = composer.load(MOCO, {"train.batch_size": 8, "train.steps": 4, "blocks.projector.dims": "[96, 32, 8]",
                                 "blocks.queue.dim": 8})
    with pytest.raises(CheckpointError, match="does not match this graph"):
        train(other, fast(out, resume=True))
