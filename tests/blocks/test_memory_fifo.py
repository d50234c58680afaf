"""memory.fifo: a FIFO of past keys, newest first, against a plain Python list of batches as the reference; when
it starts writing, when it is full, accumulated micro-batches, MoCo-style shared reading, and the one-line errors
of ``ptc check`` for bad parameters. (SwAV's per-process queues on 2 processes: tests/graph/test_swav_queue.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fault_helpers import one_error_line

from composer.blocks.memory import Fifo
from composer.cli import main as ptc_main

SWAV = str(Path(__file__).resolve().parents[2] / "graphs" / "swav.yaml")


def _keys(step: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(step))


@pytest.mark.parametrize("streams", [None, 2])
def test_rows_are_the_last_batches_newest_first_and_full_once_all_are_written(streams):
    fifo = Fifo(size=6, dim=3, streams=streams, start=2)
    fifo.bind_run(total_steps=10, steps_per_epoch=4)
    written = []  # the reference: batches in order of writing
    lead = () if streams is None else (streams,)
    for step in range(7):
        rows, full = fifo()
        expected = torch.cat(written[::-1][:3], dim=-2) if len(written) >= 3 else None
        assert bool(full) == (expected is not None)
        if expected is not None:
            torch.testing.assert_close(rows, expected, rtol=0, atol=0)
        elif written:  # the rows not yet written are the initial zeros
            assert torch.equal(rows[..., 2 * len(written):, :], torch.zeros(*lead, 6 - 2 * len(written), 3))
        keys = _keys(step, (*lead, 2, 3))
        fifo.update(step, keys=keys)
        if step >= 2:  # start: 2 (steps)
            written.append(keys)
    assert rows.shape == (*lead, 6, 3) and full.dtype == torch.bool and full.ndim == 0


def test_start_in_epochs_needs_the_epoch_length_and_counts_in_epochs():
    fifo = Fifo(size=4, dim=2, start="1ep")
    with pytest.raises(RuntimeError, match="bind_schedules"):
        fifo.update(0, keys=torch.ones(2, 2))
    fifo.bind_run(total_steps=20, steps_per_epoch=3)
    for step in range(3):
        fifo.update(step, keys=torch.ones(2, 2))
    assert int(fifo.written) == 0 and not fifo().full
    fifo.update(3, keys=torch.ones(2, 2))
    assert int(fifo.written) == 2


def test_accumulated_micro_batches_are_one_write_of_their_rows():
    one, two = Fifo(size=8, dim=3, streams=2), Fifo(size=8, dim=3, streams=2)
    a, b = _keys(0, (2, 2, 3)), _keys(1, (2, 2, 3))
    one.update(0, keys=torch.cat([a, b], dim=1))   # one batch of 4 rows per stream
    two.update(0, keys=torch.cat([a, b], dim=0))   # the trainer's merge of 2 micro-batches: (2·S, 2, D)
    assert torch.equal(one.memory, two.memory) and int(two.written) == 4
    with pytest.raises(ValueError, match=r"keys must be \(streams=2, N, D\)"):
        two.update(1, keys=torch.ones(3, 2, 3))


def test_random_init_gives_unit_rows_that_do_not_count_as_written():
    fifo = Fifo(size=4, dim=5, init="random")
    rows, full = fifo()
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(4))
    assert not full


def test_a_size_that_is_not_a_multiple_of_the_batch_fails_at_the_write():
    fifo = Fifo(size=5, dim=2)
    with pytest.raises(ValueError, match="not a multiple of the global batch 2"):
        fifo.update(0, keys=torch.ones(2, 2))


@pytest.mark.parametrize("setting, message", [
    ("blocks.queue.size=3850", "parameter 'size' of memory.fifo: 3850 is not a multiple of train.batch_size 256; "
                               "expected a multiple of the global batch 256, e.g. 3840 (rounded down)"),
    ("blocks.queue.start=later", "cannot build memory.fifo: start: expected a duration such as 1000 (steps) or "
                                 "30ep (epochs), got 'later'"),
    ("blocks.queue.streams=0", "parameter 'streams' of memory.fifo: 0 is out of range; expected a number >= 1"),
    ("blocks.queue.init=ones", "parameter 'init' of memory.fifo: 'ones' is not one of ['zeros', 'random']"),
])
def test_a_bad_queue_parameter_is_one_line(setting, message, capsys):
    assert ptc_main(["check", SWAV, "--variant", "bs256", "--set", setting]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("<--set>: node 'queue': ") or line.startswith("<--set>: variant 'bs256': node 'queue'")
    assert message in line
