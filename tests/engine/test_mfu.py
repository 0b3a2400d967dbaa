"""MFU of a multi-rank run: one rank's peak is a matmul timed with the rank's own threads
(its share of the host), so it is not divided by the ranks of the host a second time."""
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bigtrain.engine.record import model_flops_utilisation
from bigtrain.plan import profile_module
from bigtrain.plan import device as device_mod
from bigtrain.plan.device import rank_peak_flops

SECONDS = 0.01  # injected best time of every timed matmul (and copy)


class _OneSample:
    def take(self, idx, device):
        return torch.zeros(len(idx), 8), torch.zeros(len(idx), 4), None


@pytest.fixture
def fixed_clock(monkeypatch):
    """Every timed call takes SECONDS, 2 cores, 1 thread per rank: 2 ranks fill the host."""
    monkeypatch.setattr(device_mod, "_time_best", lambda fn, repeats: SECONDS)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 2.0 * 512 ** 3 / SECONDS  # the rank's measured FLOP/s (n = 512)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("world,local", [(1, 1), (2, 2), (4, 2)])
def test_mfu_divides_by_one_peak_per_rank(fixed_clock, world, local):
    task = SimpleNamespace(module=nn.Linear(8, 4), train=_OneSample())
    flops = profile_module(task.module, example_input=torch.zeros(1, 8)).forward_flops_per_sample
    mfu, job_peak = model_flops_utilisation(task, samples_per_s=1e6, world_size=world,
                                            local_world_size=local)
    assert job_peak == pytest.approx(world * fixed_clock)  # each rank measured its own share
    assert mfu == pytest.approx(3.0 * flops * 1e6 / (world * fixed_clock))


def test_rank_peak_shares_cores_only_when_oversubscribed():
    assert rank_peak_flops(1e10, threads=1, ranks_per_host=2, cores=2) == 1e10
    assert rank_peak_flops(1e10, threads=2, ranks_per_host=2, cores=2) == 5e9  # 4 threads, 2 cores
    assert rank_peak_flops(1e10, threads=8, ranks_per_host=1, cores=None) == 1e10
