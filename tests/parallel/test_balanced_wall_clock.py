"""Speed-aware data parallel measured on the wall clock (the default clock), with a rank that
really is slower: once through a genuinely larger per-step load (rank 1 runs extra forward
passes of its share, no knob), once through the slow-rank knob's real sleep. The shares must
move towards the fast rank; bounds are generous (the machine is shared), no timing asserted."""
import statistics

import pytest
import torch

from bigtrain.parallel.balanced import BalancedDataParallel
from tests.dist import run_ranks
from tests.parallel.test_balanced import _train
from tests.parallel.strategy_cases import token_mlp

EXTRA_FORWARDS = 12  # rank 1's extra forwards per step: several times the work of rank 0
KNOB = 3.0           # rank 1's slowdown through the slow-rank knob (a real sleep)


def _burn_extra_forwards(module, inputs, output):
    """A forward hook: run the module's forward EXTRA_FORWARDS more times on the same share
    and throw the results away (real compute on the wall clock; the training is unchanged)."""
    with torch.no_grad():
        for _ in range(EXTRA_FORWARDS):
            module.forward(*inputs)  # .forward, not __call__: the hook does not fire again


def _wall_clock_runs(rank, world_size, steps, batch):
    out = {}
    model, task = token_mlp(steps, batch)
    if rank == 1:
        task.module.register_forward_hook(_burn_extra_forwards)
    out["load"] = _train(model, task, BalancedDataParallel(rebalance_every=4, clock="wall",
                                                           slow_ranks={}))
    model, task = token_mlp(steps, batch)
    out["knob"] = _train(model, task, BalancedDataParallel(
        slow_ranks={1: KNOB}, rebalance_every=4, clock="wall"))
    return {k: stats for k, (_, stats) in out.items()}


def _settled_ratio(history: list[list[float]]) -> float:
    """Rank 0's share over rank 1's, the median of the last three re-splits (one noisy
    window on a shared machine does not decide it)."""
    return statistics.median(s[0] / s[1] for s in history[-3:])


@pytest.mark.slow
def test_wall_clock_shares_follow_a_really_slower_rank():
    got = run_ranks(_wall_clock_runs, 2, 24, 256, timeout=300)
    for name in ("load", "knob"):
        stats = got[0][name]
        assert got[1][name]["shares"] == stats["shares"]  # both ranks decided the same
        assert stats["share_history"][0] == [0.5, 0.5] and len(stats["share_history"]) >= 4
    load, knob = got[0]["load"]["share_history"], got[0]["knob"]["share_history"]
    # measured ~4.7 (work ratio: 3 + 12 no-grad forwards against 3); > 2 leaves room for a
    # shared machine (without the extra load: ~1.0-1.3)
    assert 2.0 < _settled_ratio(load) < 12.0, load
    assert 1.8 < _settled_ratio(knob) < 5.0, knob  # ideal KNOB = 3 (measured ~3.3)
