"""The collapse warning: a loss between two trainable branches with nothing that keeps them from collapsing.

A joint-embedding loss such as SimSiam's negative cosine or BYOL's regression is minimised by an encoder that
maps every image to the same vector. Something must rule that solution out, and each method names its guard:

- a stop-gradient on one input (SimSiam, Chen & He 2021, Sec. 4.1: "without stop-gradient ... the
  optimizer quickly finds a degenerated solution"; BYOL's target branch), or an input computed by an EMA
  teacher or read from a memory (BYOL, MoCo, DINO), or taken from the data (MAE's pixels): then one input
  carries no gradient, and this check sees it in the graph;
- a loss that is its own guard, declared by its block class::

      @block("loss.barlow_twins")
      class BarlowTwins(nn.Module):
          collapse_guard = "redundancy reduction"   # the identity cross-correlation target (Zbontar et al. 2021)

  (contrastive losses: ``"negatives"``; VICReg: ``"variance and covariance terms"``; MAE: ``"a reconstruction
  target"``). The older boolean attributes ``uses_negatives`` and ``reconstructs`` still count;
- or a guard the graph declares for one of its loss blocks (a loss written as an expression cannot know it)::

      guards:
        barlow: redundancy reduction (the loss drives the cross-correlation to the identity)

A loss with no guard of any kind, none of whose inputs is stopped or comes from a teacher or memory, and with
at least two inputs that carry gradient into trainable blocks, gets one warning line naming the loss, those
inputs and the trainable blocks behind them, and what it lacks. Inputs from the data or from parameter-free
blocks (a schedule value) are neither guards nor branches. An asymmetric predictor alone
is not a guard: SimSiam with a predictor but without its stop-gradient collapses (Chen & He 2021, Fig. 2).
"""
from __future__ import annotations

from composer.runtime.errors import GraphError, GraphErrors

GUARD_ATTRIBUTE = "collapse_guard"
LEGACY_ATTRIBUTES = {"uses_negatives": "negatives", "reconstructs": "a reconstruction target"}
NOT_TRAINABLE = ("teacher", "memory", "ops")  # families whose blocks carry no trainable weights of their own


def block_guard(cls: type) -> str | None:
    """The guard a block class declares (``collapse_guard``, or a legacy boolean attribute), else None."""
    guard = getattr(cls, GUARD_ATTRIBUTE, None)
    if isinstance(guard, str) and guard.strip():
        return guard.strip()
    for attr, text in LEGACY_ATTRIBUTES.items():
        if getattr(cls, attr, False):
            return text
    return None


def declared_guards(spec) -> dict[str, str]:
    """The graph's ``guards: {LOSS_BLOCK: REASON}``; a malformed entry is a ``GraphErrors`` (one line each)."""
    value = spec.data.get("guards")
    if value is None:
        return {}
    expected = "guards: {LOSS_BLOCK: REASON}, e.g. {barlow: redundancy reduction}"
    if not isinstance(value, dict):
        raise GraphErrors([GraphError(f"'guards' must be a mapping, got {value!r}", spec.loc("guards"),
                                      expected=expected)])
    errors, out = [], {}
    for name, reason in value.items():
        block = spec.blocks.get(name)
        if block is None or block.info.family != "loss":
            from composer.blocks.registry import did_you_mean
            losses = [n for n, b in spec.blocks.items() if b.info.family == "loss"]
            what = "is not a block of this graph" if block is None else f"is a {block.kind} block, not a loss"
            errors.append(GraphError(f"guards: {name!r} {what}{did_you_mean(name, losses)}", spec.loc("guards", name),
                                     expected="the name of a loss block: " + (", ".join(losses) or "(none)")))
        elif not isinstance(reason, str) or not reason.strip():
            errors.append(GraphError(f"guards.{name}: the reason must be a non-empty text, got {reason!r}",
                                     spec.loc("guards", name), expected=expected))
        else:
            out[name] = reason.strip()
    if errors:
        raise GraphErrors(errors)
    return out


def collapse_warnings(spec) -> list[str]:
    """One warning line per loss that two trainable branches feed with nothing guarding it against collapse."""
    declared = declared_guards(spec)
    warnings = []
    for name, node in spec.nodes.items():
        if node.kind != "call" or spec.blocks[node.block].info.family != "loss" or not node.inputs:
            continue
        block = spec.blocks[node.block]
        if node.block in declared or block_guard(block.info.cls):
            continue
        if any(_stopped(spec, edge) for edge in node.inputs.values()):
            continue  # one input is a fixed target: stopped, or from an EMA teacher or a memory
        branches = {port: _trainable_behind(spec, edge) for port, edge in node.inputs.items()}
        branches = {port: blocks for port, blocks in branches.items() if blocks}
        if len(branches) < 2:
            continue  # at most one trainable branch: the others are data (MAE's pixels) or parameter-free values
        inputs = "; ".join(f"{port!r} from {node.inputs[port].src!r} (through {', '.join(blocks)})"
                           for port, blocks in branches.items())
        where = f"{node.loc}: " if node.loc else f"{spec.path}: "
        warnings.append(
            f"{where}warning: node {name!r}: loss {node.block!r} ({block.kind}) can collapse: its inputs carry "
            f"gradient into trainable blocks — {inputs} — and the graph has no guard for it: no !sg on an input, "
            f"no EMA teacher or memory behind one, and {block.kind} declares no collapse_guard (a constant output "
            f"minimises it). Put !sg on one input (SimSiam, BYOL); or, if the loss is its own guard (Barlow Twins' "
            f"redundancy reduction, VICReg's variance term), declare it: 'guards: {{{node.block}: REASON}}' in the "
            f"graph or 'collapse_guard = \"REASON\"' on the block class")
    return warnings


def _upstream(spec, edge, stop=lambda node: False):
    """The nodes the value on ``edge`` is computed from through gradient-carrying edges (none past ``!sg``);
    the walk does not go on past a node for which ``stop(node)`` holds (that node is still yielded)."""
    if edge.sg:
        return
    seen, stack = set(), [edge.src]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = spec.nodes[name]
        yield node
        if not stop(node):
            stack.extend(e.src for e in node.inputs.values() if not e.sg)


def _stateful(spec, node) -> bool:
    """A call of an EMA teacher or a memory: its output is a fixed target, and no gradient flows into it."""
    return node.kind == "call" and spec.blocks[node.block].info.family in ("teacher", "memory")


def _stopped(spec, edge) -> bool:
    """Whether the value on ``edge`` is a fixed target: ``!sg``, or computed from an EMA teacher or a memory."""
    return edge.sg or any(_stateful(spec, node) for node in _upstream(spec, edge))


def _trainable_behind(spec, edge) -> list[str]:
    """Trainable blocks the value on ``edge`` depends on through gradient-carrying edges (empty: a fixed target)."""
    found = []
    for node in _upstream(spec, edge, stop=lambda n: n.stage != "model" or _stateful(spec, n)):
        if node.stage == "model" and node.kind == "call" and not _stateful(spec, node) \
                and spec.blocks[node.block].info.family not in NOT_TRAINABLE and node.block not in found:
            found.append(node.block)
    return found
