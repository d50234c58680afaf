"""The graph language: read a YAML graph, parse it into a spec, check it, dry-run its shapes, compile it.

    read (loader) → GraphSpec (spec) → checks (validate, shapes, schema) → two fx GraphModules (compile)
    → ComposedModel (model)

Blocks are reached only through ``composer.blocks.registry``.
"""
from __future__ import annotations

from composer.graph.model import ComposedModel, Output


def load(path, overrides=None, variant: str | None = None):
    """Read a graph file (with ``extends:``, the named ``variant`` and ``--set``-style overrides) → ``GraphSpec``."""
    from composer.graph.autosize import resolve_auto
    from composer.graph.loader import load_located
    from composer.graph.requires import check_requires
    from composer.graph.spec import parse
    from composer.runtime.errors import GraphErrors
    located = load_located(path, overrides, variant)
    check_requires(located, str(path))  # before block types are looked up: "pip install X", not "unknown type"
    spec = parse(located, str(path))
    errors = resolve_auto(spec.blocks, spec.nodes, spec.located)  # `vocab_size: auto`, from the wired blocks
    if errors:
        raise GraphErrors(errors)
    return spec


def check(spec, dry_run: bool = True):
    """Validate ``spec`` statically and by a dry run on the meta device → ``Report`` (warnings, shapes)."""
    from composer.graph.validate import check as run
    return run(spec, dry_run=dry_run)


def build(spec, device=None, check: bool = True) -> ComposedModel:
    """Compile ``spec`` into a ``ComposedModel`` on ``device`` (data-stage blocks stay on the CPU)."""
    from composer.graph.compile import assign_stages, build_blocks, build_stage
    from composer.graph.model import DataStage
    from composer.graph.validate import check as run_check
    if check:
        run_check(spec)
    assign_stages(spec)
    modules = build_blocks(spec, device)
    data_gm, _ = build_stage(spec, modules, "data")
    model_gm, reads = build_stage(spec, modules, "model")
    return ComposedModel(spec, modules, DataStage(data_gm, spec.inputs), model_gm, reads)


__all__ = ["load", "check", "build", "ComposedModel", "Output"]
