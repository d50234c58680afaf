"""The run folder and what the trainer writes into it (rank 0 only).

    RUN/graph.yaml        the resolved graph (extends, variant and --set applied): ``ptc eval`` rebuilds from it
    RUN/graph.svg         its diagram (when graphviz's ``dot`` is installed)
    RUN/run.json          the trainer options (data spec, seed, precision ...)
    RUN/metrics.jsonl     one JSON object per logged step: {"step": 12, "loss": ..., "lr": ..., ...}
    RUN/tb/               TensorBoard scalars (the same values)
    RUN/checkpoints/      see composer.train.checkpoint
    RUN/profile/          torch.profiler traces with --profile

On resume the metrics of steps after the checkpoint are dropped from ``metrics.jsonl`` and TensorBoard
(``purge_step``), so the logs of an interrupted and resumed run read like those of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import yaml

from composer.draw.render import render
from composer.graph.loader import SG
from composer.runtime.errors import UserError, os_error_line


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(SG, lambda d, sg: _sg_node(d, sg.value))
_Dumper.add_representer(tuple, lambda d, t: d.represent_list(list(t)))


def _sg_node(dumper, value):
    node = dumper.represent_data(value)
    node.tag = "!sg"
    return node


def graph_yaml(data: dict) -> str:
    """The resolved graph as YAML (``!sg`` kept; ``variants`` dropped, having been applied already)."""
    body = {k: v for k, v in data.items() if k not in ("variants", "extends")}
    return yaml.dump(body, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120)


def write_run_files(run_dir: Path, spec, options: dict) -> None:
    """``graph.yaml``, ``run.json`` and the diagram ``graph.svg`` (skipped with a note without graphviz)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "graph.yaml").write_text(graph_yaml(spec.data))
    (run_dir / "run.json").write_text(json.dumps(options, indent=2, default=str) + "\n")
    try:
        render(spec, str(run_dir / "graph.svg"))
    except Exception as e:  # a missing `dot` binary must not stop training
        print(f"note: could not draw the graph diagram ({type(e).__name__}: {e})", file=sys.stderr)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` with ``step <= last_step`` (run when resuming from ``last_step``)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    path.write_text("".join(k + "\n" for k in kept))


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Scalars to ``metrics.jsonl`` and TensorBoard, and a tqdm progress bar; a no-op when not ``enabled``."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, resumed: bool,
                 progress: bool = True, tensorboard: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.writer = self.bar = self.file = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        if resumed:
            truncate_metrics(path, start_step)
        elif path.exists():
            path.unlink()
        self.file = open(path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if resumed else None)
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record ``scalars`` at ``step`` (the number of optimizer steps taken)."""
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()}
        try:
            self.file.write(json.dumps({"step": step, **clean}) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: the lines written so far and the checkpoints stay
            name, self.file = self.file.name, _close_quietly(self.file)
            raise UserError(os_error_line(e, name, "cannot write the metrics")) from None
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, float(value), step)

    def progress(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}", refresh=False)
            self.bar.update(step - self.bar.n)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def _close_quietly(file) -> None:
    """Close a file whose last write failed (the failed bytes cannot be written either); returns None."""
    try:
        file.close()
    except OSError:
        pass


def open_run(run: str, checkpoint_path: str | None = None, random_init: bool = False, device: str = "cpu"):
    """(model, run options, checkpoint path or None) of a run folder; ``UserError`` when it is unusable."""
    import torch

    from composer.graph import build, load
    from composer.train import checkpoint, launch
    run_dir = Path(run)
    if not (run_dir / "graph.yaml").is_file():
        raise UserError(f"{run_dir}: not a run folder (no graph.yaml); expected the --out folder of ptc train")
    options = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    spec = load(run_dir / "graph.yaml")
    launch.seed_all(int(options.get("seed", 0)))  # the run's initialisation, for --random-init
    model = build(spec, check=False).to(torch.device(device))  # CPU init, as in training
    path = None
    if not random_init:
        try:
            path = checkpoint.resolve(checkpoint_path or run_dir)
            state = checkpoint.load(path)
            checkpoint.load_model_state(model, state, path)
        except checkpoint.CheckpointError as e:
            raise UserError(str(e)) from None
    return model, options, path
