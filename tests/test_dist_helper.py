import pytest
import torch
import torch.distributed as dist

from tests.dist import run_ranks


def _allreduce(rank, world_size):
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    return t.item()


def _fail_on_one(rank, world_size):
    if rank == 1:
        raise ValueError("planted failure")
    return rank


def test_run_ranks_returns_in_rank_order():
    assert run_ranks(_allreduce, 2) == [3.0, 3.0]


def test_run_ranks_reports_a_failing_rank():
    with pytest.raises(RuntimeError, match="planted failure"):
        run_ranks(_fail_on_one, 2)
