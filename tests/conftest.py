"""The tests mirror the packages (tests/graph, tests/train ...); the shared helpers stay here, importable by all,
with the fixtures that several test modules use."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``), as
    DataLoader workers run; on tiny images more threads only add contention. The count is restored after."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_process_runs(request, tmp_path_factory) -> Path:
    """The folder that the test module's ``_worker(rank, world_size, out_dir)`` wrote into on ``WORLD`` gloo
    processes (``dist_helpers.spawn``): one spawn per module, read by all its tests."""
    from dist_helpers import spawn
    module = request.module
    out = tmp_path_factory.mktemp(module.__name__.rpartition(".")[2])
    spawn(module._worker, module.WORLD, str(out))
    return out
