"""Value checks before anything is built: parameter ranges, objective weights, numbers in ``train:``, and bounds
that depend on the graph (a masker's counts against the patch grid of the images it receives).

Ranges are declared by the blocks (``composer.blocks.ranges``); every number must be finite. Each error points at
the line where the value was written (the child file's line across ``extends:``, ``<--set>`` for overrides).
"""
from __future__ import annotations

import math

from composer.blocks.registry import Range, range_by_name
from composer.graph.spec import GraphSpec
from composer.runtime.errors import GraphError
from composer.runtime.schedules import Schedule

_SCHEDULE_NUMBERS = ("cosine", "linear", "steps", "constant")  # the values of a schedule; the rest are steps
POSITIVE_WEIGHT = Range(gt=0)  # a negative objective weight trains by gradient ascent; zero trains nothing


def value_errors(spec: GraphSpec) -> list[GraphError]:
    """All range, weight and grid errors of ``spec``, one per wrong value."""
    errors = param_errors(spec) + objective_errors(spec) + train_number_errors(spec)
    if not errors:  # grid and cross-block bounds compare parameters that must be sane first
        from composer.graph.consistency import consistency_errors
        errors += grid_errors(spec) + consistency_errors(spec)
    return errors


def param_errors(spec: GraphSpec) -> list[GraphError]:
    errors = []
    for name, block in spec.blocks.items():
        for pname, value in block.params.items():
            param = block.info.params.get(pname)
            if param is None:
                continue  # an unknown parameter: reported by the parser
            schedule = param.annotation is Schedule
            for x in _numbers(value, schedule):
                why = param.range.violation(x)
                if why:
                    errors.append(GraphError(f"parameter {pname!r} of {block.kind}: {why}",
                                             spec.loc("blocks", name, pname), node=name,
                                             expected=param.range.describe()))
                    break  # one line per parameter
            if isinstance(value, dict) and not schedule:  # a mapping of keyword arguments (timm's model_args)
                errors += _nested_errors(spec, block, pname, value)
    return errors


def _nested_errors(spec: GraphSpec, block, pname: str, value: dict) -> list[GraphError]:
    """Numbers inside a mapping parameter: finite, and in the range their key has anywhere (``drop_path_rate``)."""
    errors = []
    for key, item in value.items():
        bounds = range_by_name(str(key))
        for x in _numbers(item, False):
            why = bounds.violation(x)
            if why:
                errors.append(GraphError(f"parameter {pname!r} of {block.kind}: {key}: {why}",
                                         spec.loc("blocks", block.name, pname, key), node=block.name,
                                         expected=bounds.describe()))
                break
    return errors


def objective_errors(spec: GraphSpec) -> list[GraphError]:
    """Weights finite and > 0; a term declared ``{weight: w, allow_negative: true}`` may be <= 0 (still finite)."""
    errors = []
    for name, weight in spec.objective.items():
        signed = name in spec.signed_objective
        why = (Range() if signed else POSITIVE_WEIGHT).violation(weight)
        if why:
            where = spec.loc("objective", name, "weight") if isinstance(spec.data.get("objective"), dict) and \
                isinstance(spec.data["objective"].get(name), dict) else spec.loc("objective", name)
            errors.append(GraphError(f"the objective weight of {name!r}: {why}", where, node=name,
                                     expected="a finite weight" if signed else
                                     "a finite weight > 0 (a negative one trains by gradient ascent; write "
                                     f"{{{name}: {{weight: {weight:g}, allow_negative: true}}}} if that is meant)"))
    return errors


def train_number_errors(spec: GraphSpec) -> list[GraphError]:
    """Every number under ``train:`` must be finite (a NaN learning rate trains into NaNs without a word)."""
    errors = []

    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, path + (i,))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append(GraphError(f"'{'.'.join(str(p) for p in path)}' is {value}", spec.loc(*path),
                                     expected="a finite number"))

    walk(spec.train, ("train",))
    return errors


def grid_errors(spec: GraphSpec) -> list[GraphError]:
    """Maskers against the ``(size / patch_size)²`` grid of the images reaching them (when the size is known)."""
    errors = []
    for node in spec.nodes.values():
        if node.kind != "call" or not node.inputs:
            continue
        block = spec.blocks[node.block]
        rule = GRID_RULES.get(block.kind)
        if rule is None:
            continue
        edge = next(iter(node.inputs.values()))
        size = image_size(spec, edge.src, field=edge.field)
        patch = _param(block, "patch_size")
        if size is None or not isinstance(patch, int):
            continue
        if patch > size:
            errors.append(GraphError(f"{block.kind}: patch_size {patch} exceeds the {size}-pixel images it masks",
                                     spec.loc("blocks", block.name, "patch_size"), node=block.name,
                                     expected=f"patch_size <= {size}"))
            continue
        for pname, message, bound in rule((size // patch) ** 2, block):
            errors.append(GraphError(f"{block.kind}: {message} (the {size // patch}x{size // patch} grid of "
                                     f"{size}-pixel images in {patch}-pixel patches)",
                                     spec.loc("blocks", block.name, pname), node=block.name, expected=bound))
    return errors


def _block_mask(grid: int, block):
    """BEiT block masking: a count above the grid never ends; the smallest block cannot exceed the count."""
    if _param(block, "ratio") is not None:  # iBOT's per-image ratios: the count is a fraction of any grid
        return
    n, low = _param(block, "num_masking_patches"), _param(block, "min_num_patches")
    if n > grid:
        yield "num_masking_patches", f"num_masking_patches {n} exceeds the {grid} patches", f"at most {grid}"
    elif low > n:
        yield "min_num_patches", f"min_num_patches {low} exceeds num_masking_patches {n}", f"at most {n}"


def _multi_block(grid: int, block):
    """I-JEPA: each of ``npred`` target blocks and the ``min_keep`` context patches must fit the grid."""
    npred, keep = _param(block, "npred"), _param(block, "min_keep")
    if npred > grid:
        yield "npred", f"npred {npred} target blocks exceed the {grid} patches", f"at most {grid}"
    if keep > grid:
        yield "min_keep", f"min_keep {keep} exceeds the {grid} patches", f"at most {grid}"


def _random(grid: int, block):
    """MAE: keep ``int(L (1 - ratio))`` patches; keeping none or masking none leaves nothing to learn."""
    ratio = _param(block, "ratio")
    keep = int(grid * (1 - ratio))
    if keep < 1:
        yield "ratio", f"ratio {ratio} keeps no visible patch of {grid}", f"a ratio below {1 - 1 / grid:.4g}"
    elif keep >= grid:
        yield "ratio", f"ratio {ratio} masks no patch of {grid}", f"a ratio of at least {1 / grid:.4g}"


GRID_RULES = {"mask.block": _block_mask, "mask.multi_block": _multi_block, "mask.multi_block_fixed": _multi_block,
              "mask.random": _random}
SIZE_PARAMS = ("size", "global_size", "img_size")


def image_size(spec: GraphSpec, name: str, seen: frozenset = frozenset(), field: str | None = None) -> int | None:
    """The side of the images in value ``name`` (its output ``field``): the ``size`` of the augmentation or
    encoder computing them."""
    node = spec.nodes.get(name)
    if node is None or name in seen:
        return None
    if node.kind == "alias":
        edge = node.inputs["value"]
        return image_size(spec, edge.src, seen | {name}, edge.field)
    if node.kind == "call" and spec.blocks[node.block].info.family == "augment":
        block = spec.blocks[node.block]
        sides = getattr(block.info.cls, "image_sides", None)
        if sides is not None:  # sizes inside lists of views (augment.views, augment.multi_crop)
            return sides(block.params).get(field)
        for p in SIZE_PARAMS:
            if p in block.info.params:
                size = _param(block, p)
                return size if isinstance(size, int) and not isinstance(size, bool) else None
    return None


def _param(block, name):
    return block.params.get(name, block.info.params[name].default)


def _numbers(value, schedule: bool):
    """The numbers of a parameter value: itself, list items, a schedule's values (not its step counts)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v, schedule)
    elif isinstance(value, dict) and schedule:
        for k in _SCHEDULE_NUMBERS:
            if k in value:
                yield from _numbers(value[k], False)
