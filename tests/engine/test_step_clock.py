"""The step's clocks (`StepContext.step_start`) are read only for a strategy that asks:
`Strategy.reads_step_clock` (speed-aware data parallel, or slow ranks)."""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.engine.step import train_step
from bigtrain.parallel.balanced import BalancedDataParallel
from bigtrain.parallel.base import StepBatch, Strategy
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.data_parallel import DataParallel


def test_only_speed_aware_or_slowed_strategies_read_the_step_clock():
    assert not Strategy().reads_step_clock
    assert not DataParallel().reads_step_clock
    assert not BalancedDataParallel(balance="fixed", weights=[1, 1]).reads_step_clock
    assert BalancedDataParallel(balance="speed").reads_step_clock
    assert BalancedDataParallel(balance="fixed", weights=[1, 1],
                                slow_ranks={1: 2.0}).reads_step_clock


def _one_step(strategy: Strategy) -> StepContext:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = StepContext()
    batch = StepBatch([(torch.randn(8, 4), torch.randint(0, 2, (8,)), None)], [1.0])
    train_step(strategy, ctx, model, opt, batch, lambda out, y, sw: F.cross_entropy(out, y),
               contextlib.nullcontext)
    return ctx


def test_a_step_notes_the_clocks_only_when_the_strategy_reads_them():
    assert _one_step(Strategy()).step_start == (0.0, 0.0)

    class Reads(Strategy):
        reads_step_clock = True
    wall, cpu = _one_step(Reads()).step_start
    assert wall > 0.0 and cpu > 0.0
