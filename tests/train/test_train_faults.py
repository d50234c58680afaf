"""Nothing lost, nothing silent: a loss that turns NaN at a chosen step, an --out that is a file, read-only or
holds an earlier run's metrics, and exports and diagrams to places that cannot be written. Each ends in one
line and exit 2, and what was written before stays."""
from __future__ import annotations

import torch
from fault_helpers import one_error_line, tmpfs
from train_helpers import DATA, MOCO, SIMCLR

import composer
from composer.cli import main as ptc_main
from composer.train import checkpoint
from composer.train.runlog import read_metrics, write_run_files

# lr 0.01 for optimizer steps 0-2, then 0.01 x 1e32: step 3 throws the weights to ~1e30, so the loss of step 4
# (computed on the weights checkpointed as step 4) is NaN.
EXPLODE_AT_3 = "train.lr={steps: [0.01, 1.0e+32], at: [3]}"


def _cli(out, steps: int, *extra) -> list[str]:
    return ["train", MOCO, "--set", "train.batch_size=8", "--steps", str(steps), "--data", DATA, "--out", str(out),
            "--workers", "0", "--threads", "1", "--device", "cpu", "--no-progress", "--probe-every", "-1", *extra]


def _max_abs(state: dict) -> float:
    return max(float(v.abs().max()) for v in state["model"].values() if v.is_floating_point() and v.numel())


def test_nan_at_a_chosen_step_names_the_real_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert ptc_main(_cli(out, 8, "--set", EXPLODE_AT_3, "--ckpt-every", "1")) == 2
    line = one_error_line(capsys.readouterr().err)
    good, bad = checkpoint.path_for(out, 3), checkpoint.path_for(out, 4)
    assert line.startswith("the loss is nan at step 4")
    assert f"Last good checkpoint: {good};" in line and f"kept as {bad.name}.diverged" in line
    aside = bad.with_name(bad.name + ".diverged")
    assert _max_abs(torch.load(aside, weights_only=True)) > 1e20          # the weights that gave the NaN, kept
    assert _max_abs(checkpoint.load(good)) < 1e3                           # the named one is sane ...
    assert checkpoint.latest(out) == good                                  # ... and what --resume takes
    logged = [m["step"] for m in read_metrics(out) if "loss" in m]
    assert logged == [1, 2, 3, 4]
    # as the message says: lower the lr and resume; the run goes on from step 3 with the same first steps
    assert ptc_main(_cli(out, 8, "--set", "train.lr=0.01", "--ckpt-every", "1", "--resume")) == 0
    assert f"resumed from {good} at step 3" in capsys.readouterr().err
    rows = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in rows] == list(range(1, 9))
    assert all(isinstance(m["loss"], float) for m in rows)
    assert checkpoint.load(checkpoint.latest(out))["step"] == 8


def test_out_that_is_a_file_or_read_only_is_one_line(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    assert ptc_main(_cli(target, 2)) == 2
    assert "a file, not a folder" in one_error_line(capsys.readouterr().err)
    assert target.read_text() == "keep me\n"
    assert ptc_main(_cli(target / "run", 2)) == 2
    assert f"{target} is a file" in one_error_line(capsys.readouterr().err)
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mounted:
        if mounted:
            assert ptc_main(_cli(tmp_path / "ro" / "run", 2)) == 2
            line = one_error_line(capsys.readouterr().err)
            assert "read-only file system" in line and str(tmp_path / "ro") in line


def test_out_with_metrics_but_no_checkpoint_is_not_replaced_silently(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 4.2}\n')
    for extra in ((), ("--resume",)):
        assert ptc_main(_cli(out, 2, *extra)) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "holds the metrics of an earlier run" in line and "--overwrite" in line
        assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 4.2}\n'
    assert ptc_main(_cli(out, 2, "--overwrite")) == 0
    assert [m["step"] for m in read_metrics(out)] == [1, 2]


def test_export_and_render_to_unwritable_places_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    spec = composer.load(SIMCLR, variant="dist")
    write_run_files(run, spec, {"seed": 0, "data": DATA})
    checkpoint.save(checkpoint.path_for(run, 1), {"format": checkpoint.FORMAT, "step": 1,
                                                  "model": composer.build(spec, check=False).state_dict()})
    capsys.readouterr()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    places = [(blocker / "e.st", blocker / "d.svg"), (tmp_path, tmp_path)]       # under a file; a folder
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mounted:
        if mounted:
            places.append((tmp_path / "ro" / "e.st", tmp_path / "ro" / "d.svg"))   # a read-only file system
        for export, diagram in places:
            assert ptc_main(["export", str(run), "-o", str(export)]) == 2
            line = one_error_line(capsys.readouterr().err)
            assert line.startswith(f"{export}: ") and ("cannot write the export" in line or "is a folder" in line)
            assert ptc_main(["render", SIMCLR, "-o", str(diagram), "--format", "svg"]) == 2
            line = one_error_line(capsys.readouterr().err)
            assert line.startswith(f"{diagram}: ") and ("cannot write the diagram" in line or "is a folder" in line)
    assert blocker.read_text() == "x"
    assert ptc_main(["export", str(run), "-o", str(tmp_path / "ok.safetensors")]) == 0


def test_skipped_samples_warn_once_each_and_stop_past_the_limit():
    import pytest

    from composer.train.batches import SkippedSamples, TooManyBadSamples
    said = []
    count = SkippedSamples(2, said.append, {"a.png": "truncated"})          # one met before a resume
    count.add([("b.png", "not an image"), ("a.png", "truncated")])
    count.add([("b.png", "not an image")])                                   # met again in the next epoch
    assert len(count) == 2 and len(said) == 1 and "b.png" in said[0]
    count.check([2])
    count.add([("c.png", "EIO")])  # counted; the limit is checked after the step's all-reduce (check)
    with pytest.raises(TooManyBadSamples, match=r"3 unreadable samples, more than --max-bad-samples 2: "
                                                r"a.png, b.png, c.png;"):
        count.check([len(count)])
    ranked = SkippedSamples(2, said.append, {"a.png": "truncated"}, rank=1, world_size=2)
    ranked.add([("d.png", "EIO")])
    assert said[-1].startswith("warning: skipped an unreadable sample (rank 1): d.png (EIO); 2 so far on this rank")
    ranked.check([1, 2], gather=lambda files: [["d.png"], files])  # a file met by two ranks counts once
    assert ranked.total == 2
    with pytest.raises(TooManyBadSamples, match=r"3 unreadable samples \(met per rank: rank 0 2, rank 1 2\), "
                                                r"more than --max-bad-samples 2: d.png, x.png, a.png;"):
        ranked.check([2, 2], gather=lambda files: [["d.png", "x.png"], files])  # every rank's files are named
    with pytest.raises(TooManyBadSamples, match="1 unreadable samples, and no readable one within"):
        SkippedSamples(5, said.append).add([("only.png", "truncated")], batch_missing=True)
