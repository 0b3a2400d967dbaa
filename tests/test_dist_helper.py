import os

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


def _env_and_threads(rank, world_size, names):
    return {n: os.environ.get(n) for n in names}, torch.get_num_threads(), os.getpid()


def test_ranks_see_the_callers_environment_of_now(monkeypatch):
    """Ranks come from a fork server started by an earlier call, with the environment of
    then: they must still see a variable set, changed or removed since."""
    run_ranks(_allreduce, 2)  # the server (if any) starts here, before the changes below
    monkeypatch.setenv("BIGTRAIN_TEST_SET", "new value")
    monkeypatch.setenv("HOME", "/changed-home")
    monkeypatch.delenv("BIGTRAIN_TEST_GONE", raising=False)
    names = ["BIGTRAIN_TEST_SET", "HOME", "BIGTRAIN_TEST_GONE"]
    out = run_ranks(_env_and_threads, 2, names)
    assert [env for env, _, _ in out] == [{"BIGTRAIN_TEST_SET": "new value",
                                           "HOME": "/changed-home",
                                           "BIGTRAIN_TEST_GONE": None}] * 2
    assert all(threads == max(1, (os.cpu_count() or 1) // 2) for _, threads, _ in out)
    assert len({pid for _, _, pid in out} | {os.getpid()}) == 3  # processes of their own


def test_set_env_removes_what_the_caller_no_longer_has(monkeypatch):
    from tests.dist import set_env
    monkeypatch.setenv("BIGTRAIN_TEST_GONE", "the fork server may still have this")
    caller = {k: v for k, v in os.environ.items() if k != "BIGTRAIN_TEST_GONE"}
    set_env(caller)
    assert "BIGTRAIN_TEST_GONE" not in os.environ and dict(os.environ) == caller
