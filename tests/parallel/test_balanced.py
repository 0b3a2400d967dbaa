"""Speed-aware data parallel ("ddp_balanced"): the rounding of uneven shares, the re-split
from measured speeds, the engine's uneven cut of a global batch, parity of a declared 3:1
split with single-process training (max |param diff| <= 1e-5 after 5 steps), and shares that
follow a rank made 3x slower by the slow-rank knob."""
import pytest
import torch

from bigtrain.parallel.balanced import BalancedDataParallel, parse_slow_ranks, split_counts
from bigtrain.parallel.base import DistEnv, Shard, resolve_strategy
from tests.dist import run_ranks
from tests.parallel.strategy_cases import (build, max_param_diff, reference_state, token_mlp,
                                           token_mlp_reference)

TOL = 1e-5
SLOW = 3.0       # rank 1's slowdown in the speed test
# Measured share ratio within 30 % of SLOW. The shares follow CPU seconds per sample, which
# move with the machine: an idle run read 2.8-3.2 (four runs), a fresh-clone CI run beside other
# work 3.5-3.8. 30 % still tells a 3x-slower rank from an equal one (1.0) and from 2x or 4.5x.
SHARE_TOL = 0.30


# ---- pure logic -------------------------------------------------------------------------------
@pytest.mark.parametrize("n, shares, want", [
    (40, [3, 1], [30, 10]), (7, [3, 1], [5, 2]), (10, [1, 1, 1], [4, 3, 3]),
    (4, [100, 1, 1, 1], [1, 1, 1, 1]), (3, [1, 0, 5], [1, 1, 1]), (1, [1, 3], [0, 1]),
    (96, [0.6, 0.3, 0.1], [58, 29, 9]),
])
def test_split_counts(n, shares, want):
    got = split_counts(n, shares)
    assert got == want and sum(got) == n


def test_split_counts_sums_and_follows_shares():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(1, 5, (1,), generator=g))
        shares = (torch.rand(k, generator=g) + 0.05).tolist()
        n = int(torch.randint(k, 300, (1,), generator=g))
        counts = split_counts(n, shares)
        assert sum(counts) == n and min(counts) >= 1
        ideal = [s / sum(shares) * n for s in shares]
        bumped = sum(i < 1 for i in ideal)  # raised to 1 sample, each taken from the largest
        assert all(abs(c - i) < 1 + bumped for c, i in zip(counts, ideal))


def test_bad_shares_and_options_are_refused():
    with pytest.raises(ValueError, match="shares"):
        split_counts(10, [0, 0])
    with pytest.raises(ValueError, match="weights"):
        BalancedDataParallel(balance="fixed")
    with pytest.raises(ValueError, match="balance"):
        BalancedDataParallel(balance="fast")
    with pytest.raises(ValueError, match=">= 1"):
        BalancedDataParallel(slow_ranks={1: 0.5})
    with pytest.raises(ValueError, match="one share per rank"):
        BalancedDataParallel(weights=[3, 1]).validate(3, 30)
    with pytest.raises(ValueError, match="outside"):
        BalancedDataParallel(slow_ranks={2: 3.0}).validate(2, 30)


def test_slow_ranks_from_the_environment(monkeypatch):
    assert parse_slow_ranks("1:3, 2:1.5") == {1: 3.0, 2: 1.5}
    with pytest.raises(ValueError, match="rank:factor"):
        parse_slow_ranks("1=3")
    monkeypatch.setenv("BIGTRAIN_SLOW_RANKS", "1:2.5")
    assert BalancedDataParallel().slow_ranks == {1: 2.5}
    assert BalancedDataParallel(slow_ranks={}).slow_ranks == {}  # explicit wins


def test_rebalance_follows_speeds_with_moving_average():
    s = BalancedDataParallel(rebalance_every=1, ema=0.5)
    s.setup(DistEnv(rank=1, world_size=2))
    assert s.shares == [0.5, 0.5]
    s._rebalance([1e-3, 3e-3])  # rank 1 takes 3x longer per sample
    assert s.shares == pytest.approx([0.75, 0.25])
    s._rebalance([1e-3, 1e-3])  # speeds equalise: EMA moves half way (1, 1/3) -> (1, 2/3)
    assert s.shares == pytest.approx([0.6, 0.4])
    s._rebalance([1e-3, 0.0])  # a rank without a measurement: the split stays
    assert s.shares == pytest.approx([0.6, 0.4]) and len(s.share_history) == 3


def test_uneven_cut_of_a_global_batch():
    from bigtrain.engine.steps import make_step_batch
    _, task = build("seed", steps=1, batch=40)
    gidx = torch.arange(40)
    got = []
    for rank in (0, 1):
        s = BalancedDataParallel(weights=[3, 1], balance="fixed")
        s.setup(DistEnv(rank=rank, world_size=2))
        shard = s.data_shard()
        assert isinstance(shard, Shard) and tuple(shard) == (rank, 2)
        batch = make_step_batch(task.train, gidx, shard, accumulate=2, replicas=2,
                                device=torch.device("cpu"))
        got.append(([int(x.shape[0]) for x, _, _ in batch.micro], batch.weights))
    assert got[0] == ([15, 15], [0.75, 0.75]) and got[1] == ([5, 5], [0.25, 0.25])
    # weights sum to the replica count: the average over ranks is the global-batch mean
    assert sum(sum(w) for _, w in got) == pytest.approx(2.0)


# ---- distributed ------------------------------------------------------------------------------
def _train(model, task, strategy):
    import torch.distributed as dist

    from bigtrain.engine.loop import train
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                  local_rank=dist.get_rank(), local_world_size=dist.get_world_size())
    strategy.validate(env.world_size, task.config.batch_size)
    strategy.setup(env)
    result = train(task, strategy, model)
    return result.state_dict, result.stats


def _balanced_runs(rank, world_size, speed_steps, speed_batch):
    out = {}
    for acc in (1, 2):
        model, task = build("seed", accumulate=acc)
        out[f"fixed_acc{acc}"] = _train(model, task, BalancedDataParallel(
            balance="fixed", weights=[3, 1]))
    model, task = token_mlp(speed_steps, speed_batch)
    out["speed"] = _train(model, task, BalancedDataParallel(
        slow_ranks={1: SLOW}, rebalance_every=4, ema=0.5, clock="cpu"))
    out["registered"] = type(resolve_strategy("ddp_balanced")).__name__
    return out


@pytest.mark.slow
def test_uneven_parity_and_speed_shares():
    steps, batch = 24, 256
    got = run_ranks(_balanced_runs, 2, steps, batch, timeout=300)
    r0 = got[0]
    assert r0["registered"] == "BalancedDataParallel"
    ref = reference_state("seed")
    for name in ("fixed_acc1", "fixed_acc2"):
        state, stats = r0[name]
        assert stats["shares"] == [0.75, 0.25]
        assert max_param_diff(ref, state) <= TOL, name
    assert max_param_diff(ref, reference_state("seed", steps=4)) > 100 * TOL  # can tell a step

    state, stats = r0["speed"]
    # any split trains alike
    assert max_param_diff(token_mlp_reference(steps, batch), state) <= TOL
    assert stats["share_history"][0] == [0.5, 0.5] and len(stats["share_history"]) >= 4
    assert got[1]["speed"][1]["shares"] == stats["shares"]  # every rank decided the same
    ratio = stats["shares"][0] / stats["shares"][1]
    assert abs(ratio / SLOW - 1) <= SHARE_TOL, stats["share_history"]
