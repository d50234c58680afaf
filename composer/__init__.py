"""pretext-composer: self-supervised methods as YAML dataflow graphs, compiled to torch.fx.

Public API::

    spec = composer.load("graphs/moco_v2.yaml", overrides=["blocks.queue.size=4096"])
    composer.check(spec)                      # raises GraphErrors with one line per mistake
    composer.render(spec, "g.svg"); print(composer.explain(spec))
    model = composer.build(spec)              # ComposedModel
    out = model(model.data_stage(raw_batch))  # out.loss, out.values, out.updates
    out.loss.backward(); optimizer.step(); model.update(out, step)

Training: ``composer.train.train(spec, composer.train.TrainOptions(...))`` or ``ptc train``.

The package reads as the pipeline, each stage importing only from the stages before it:
``runtime`` → ``data`` → ``blocks`` → ``graph`` → ``draw`` → ``evaluate`` → ``train`` → ``cli``.
This module only forwards to them, lazily, so that importing a low stage (``composer.runtime``) does not
import the high ones.
"""
from __future__ import annotations

from composer.runtime.errors import GraphError, GraphErrors, Loc

__all__ = ["load", "check", "build", "render", "explain", "GraphError", "GraphErrors", "Loc",
           "ComposedModel", "Output"]


def load(path, overrides=None, variant: str | None = None):
    """Read a graph file (with ``extends:``, the named ``variant`` and ``--set``-style overrides) → ``GraphSpec``."""
    from composer.graph import load as run
    return run(path, overrides, variant)


def check(spec, dry_run: bool = True):
    """Validate ``spec`` statically and by a dry run on the meta device → ``Report`` (warnings, shapes)."""
    from composer.graph import check as run
    return run(spec, dry_run)


def build(spec, device=None, check: bool = True):
    """Compile ``spec`` into a ``ComposedModel`` on ``device`` (data-stage blocks stay on the CPU)."""
    from composer.graph import build as run
    return run(spec, device, check)


def render(spec, path, *args, **options):
    """Draw ``spec``'s architecture diagram into ``path`` (.svg, .png, .pdf or .dot)."""
    from composer.draw.render import render as run
    return run(spec, path, *args, **options)


def explain(spec, **options) -> str:
    """``spec`` as pseudocode with shapes, equations, parameter counts and FLOPs."""
    from composer.draw.explain import explain as run
    return run(spec, **options)


def __getattr__(name: str):
    if name in ("ComposedModel", "Output"):
        from composer.graph import model
        return getattr(model, name)
    raise AttributeError(f"module 'composer' has no attribute {name!r}")
