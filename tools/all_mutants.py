"""Every mutant of the shipped graphs (tests/graph/mutants.py), checked in-process as the mutation test does, one
line per failure and a summary; a graph at a time, so a shared machine can run it in slices:

    python tools/all_mutants.py                 # all graphs
    python tools/all_mutants.py simclr clip     # some graphs
    PTC_CHECK_SECONDS=20 python tools/all_mutants.py   # a shorter dry-run budget, so slow mutants end sooner

Exit status 1 when a mutant fails (``pytest tests/graph/test_mutations.py`` with ``PTC_ALL_MUTANTS=1`` checks the
same mutants, but stops nothing and reports in pytest's format).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "graph")]

import test_mutations as T  # noqa: E402


def main(names: list[str]) -> int:
    chosen = [(p, m) for p, m in T.ALL if not names or p.stem in names]
    failed, start = 0, time.perf_counter()
    for path, mutant in chosen:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                T._verify(path, mutant, Path(tmp))
                continue
            except (AssertionError, Exception) as e:  # noqa: B014 - both are a failing mutant here
                why = " | ".join(str(e).strip().splitlines())[:600] or type(e).__name__
        failed += 1
        print(f"FAIL {path.stem}:{mutant.id} ({time.perf_counter() - t:.1f} s): {why}", flush=True)
    print(f"{len(chosen)} mutants of {len({p for p, _ in chosen})} graphs, {failed} failed, "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
