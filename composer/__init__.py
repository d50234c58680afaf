"""pretext-composer: self-supervised methods as YAML dataflow graphs, compiled to torch.fx.

Public API::

    spec = composer.load("graphs/moco_v2.yaml", overrides=["blocks.queue.size=4096"])
    composer.check(spec)                      # raises GraphErrors with one line per mistake
    composer.render(spec, "g.svg"); print(composer.explain(spec))
    model = composer.build(spec)              # ComposedModel
    out = model(model.data_stage(raw_batch))  # out.loss, out.values, out.updates
    out.loss.backward(); optimizer.step(); model.update(out, step)

Training: ``composer.train.train(spec, composer.train.TrainOptions(...))`` or ``ptc train``.
"""
from __future__ import annotations

from composer.errors import GraphError, GraphErrors, Loc
from composer.explain import explain
from composer.model import ComposedModel, Output
from composer.render import render

__all__ = ["load", "check", "build", "render", "explain", "GraphError", "GraphErrors", "Loc",
           "ComposedModel", "Output"]


def load(path, overrides=None, variant: str | None = None):
    """Read a graph file (with ``extends:``, the named ``variant`` and ``--set``-style overrides) → ``GraphSpec``."""
    from composer.loader import load_located
    from composer.spec import parse
    return parse(load_located(path, overrides, variant), str(path))


def check(spec, dry_run: bool = True):
    """Validate ``spec`` statically and by a dry run on the meta device → ``Report`` (warnings, shapes)."""
    from composer.validate import check as run
    return run(spec, dry_run=dry_run)


def build(spec, device=None, check: bool = True) -> ComposedModel:
    """Compile ``spec`` into a ``ComposedModel`` on ``device`` (data-stage blocks stay on the CPU)."""
    from composer.compile import assign_stages, build_blocks, build_stage
    from composer.model import DataStage
    from composer.validate import check as run_check
    if check:
        run_check(spec)
    assign_stages(spec)
    modules = build_blocks(spec, device)
    data_gm, _ = build_stage(spec, modules, "data")
    model_gm, reads = build_stage(spec, modules, "model")
    return ComposedModel(spec, modules, DataStage(data_gm, spec.inputs), model_gm, reads)

