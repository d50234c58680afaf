"""Resource bounds of ``ptc check``: the memory a graph's blocks ask for, and the time of the dry run.

Memory is counted on the ``meta`` device (shapes without storage), so a ``memory.queue`` of 10^12 entries is
reported in a line instead of growing towards all of the machine's memory. The dry run gets a wall-clock budget;
a block that loops for minutes on the two example samples is stopped and named.
Both limits can be raised through the environment: ``PTC_CHECK_MEMORY_GIB`` and ``PTC_CHECK_SECONDS``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from composer.graph.spec import GraphSpec
from composer.runtime.errors import GraphError

DEFAULT_MEMORY_GIB = 256.0  # ViT-H/14 (I-JEPA) holds 2.5 GiB of fp32 weights; 100x that is a typo
DEFAULT_SECONDS = 300.0  # the largest shipped graph checks in well under a minute on 2 CPU cores


class BudgetExceeded(RuntimeError):
    """Raised inside the dry run when it runs past its time budget."""


def memory_budget_gib() -> float:
    return _env_float("PTC_CHECK_MEMORY_GIB", DEFAULT_MEMORY_GIB)


def time_budget_s() -> float:
    return _env_float("PTC_CHECK_SECONDS", DEFAULT_SECONDS)


def memory_errors(spec: GraphSpec, modules: dict) -> list[GraphError]:
    """One error when the parameters and buffers of all blocks exceed the memory budget, at the largest block."""
    sizes = {name: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
             for name, m in modules.items()}
    total, budget = sum(sizes.values()), memory_budget_gib() * 2 ** 30
    if total <= budget:
        return []
    largest = max(sizes, key=sizes.get)
    return [GraphError(f"the blocks hold {_gib(total)} of parameters and buffers ('{largest}' alone "
                       f"{_gib(sizes[largest])})", spec.blocks[largest].loc, node=largest,
                       expected=f"at most {_gib(budget)} (PTC_CHECK_MEMORY_GIB raises the limit)")]


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise ``BudgetExceeded`` in the calling thread after ``seconds`` (SIGALRM; main thread on POSIX only)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise BudgetExceeded(f"the dry run took longer than its {seconds:g} s budget "
                             "(PTC_CHECK_SECONDS raises the limit)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _gib(n: float) -> str:
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def bounded_dry_run(spec: GraphSpec) -> dict:
    """``shapes.dry_run`` after the memory check on ``meta``, under the time budget; errors as ``GraphErrors``."""
    from composer.graph.compile import build_blocks
    from composer.graph.shapes import dry_run
    from composer.runtime.errors import GraphErrors
    errors = memory_errors(spec, build_blocks(spec, "meta"))
    if errors:
        raise GraphErrors(errors)
    import torch
    try:
        # set_grad_enabled restores the caller's mode on exit: a node failing inside a teacher's no-grad region
        # would otherwise leave gradients off for the rest of the process (the region's end never runs)
        with time_limit(time_budget_s()), torch.set_grad_enabled(torch.is_grad_enabled()):
            return dry_run(spec)
    except BudgetExceeded as e:  # raised between nodes (inside one, the dry run names the node)
        raise GraphErrors([GraphError(str(e), spec.loc(), expected="a graph whose example step is quick")]) from None
