"""The pipeline runtime's per-micro-batch shortcuts give the same answers as the long way."""
import torch
from torch.distributed.pipelining import schedules
from torch.distributed.pipelining.microbatch import split_args_kwargs_into_chunks

from bigtrain.parallel.pipeline_runtime import _first_id, labels_only_when_profiling


def test_first_id_of_the_schedules_own_split_is_read_without_indexing():
    idx = torch.arange(10)
    _, chunks = split_args_kwargs_into_chunks((), {"t": idx}, 4)
    ids = [c["t"] for c in chunks]
    assert [_first_id(t, idx) for t in ids] == [int(t[0]) for t in ids] == [0, 3, 6, 8]
    # the fast path is the one taken: torch's split hands out views of idx
    assert all(t._base is idx for t in ids)


def test_first_id_of_a_copy_reads_the_values():
    idx = torch.arange(10)
    assert _first_id(idx[4:7].clone(), idx) == 4
    assert _first_id(torch.tensor([7, 8]), idx) == 7


def test_labels_off_during_a_step_and_back_after():
    real = schedules.record_function
    with labels_only_when_profiling():
        assert schedules.record_function is not real
        with schedules.record_function("Forward 0"):  # still a context manager
            pass
        with labels_only_when_profiling():  # nested: leaves the outer one's state
            assert schedules.record_function is not real
        assert schedules.record_function is not real
    assert schedules.record_function is real


def test_labels_kept_under_a_profiler():
    real = schedules.record_function
    with torch.profiler.profile() as prof:
        with labels_only_when_profiling():
            assert schedules.record_function is real
            with schedules.record_function("Forward 0"):
                torch.ones(2).sum()
    assert any(e.name == "Forward 0" for e in prof.events())
