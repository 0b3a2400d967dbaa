"""The feed's short path for one input and one target tensor gives, step for step, the
batches of the general path (index slices, shard bounds, micro-splits, `ArrayData.take`)."""
import pytest
import torch

from bigtrain.engine import feed as feed_mod
from bigtrain.engine.data import ArrayData
from bigtrain.engine.feed import EpochPlan, feed_epoch
from bigtrain.parallel.base import Shard

CPU = torch.device("cpu")


def _data(n=23, sample_weight=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return ArrayData([x], [y], torch.rand(n, generator=g) if sample_weight else None)


def _general(data, plan):
    """What the general path yields: every step's (global size, micro, weights)."""
    return [(n, [data.take(p, CPU) for p in parts], weights)
            for n, parts, weights in feed_mod._index_batches(data, plan)]


def _fed(data, plan):
    feed = feed_epoch(data, plan)
    out = []
    for _ in feed.step_numbers(plan.skip):
        n, batch = feed.next()
        out.append((n, batch.micro, batch.weights))
    return feed, out


def _equal(u, v) -> bool:
    if isinstance(u, tuple):  # several inputs
        return isinstance(v, tuple) and len(u) == len(v) and all(map(_equal, u, v))
    return (u is None and v is None) or torch.equal(u, v)


def _same(a, b):
    assert len(a) == len(b)
    for (n1, m1, w1), (n2, m2, w2) in zip(a, b):
        assert n1 == n2 and w1 == w2 and len(m1) == len(m2)
        for t1, t2 in zip(m1, m2):
            assert all(map(_equal, t1, t2))


@pytest.mark.parametrize("epoch,steps_per_epoch,shard,skip,replicas,shuffle", [
    (0, None, (0, 1), 0, 1, True),
    (2, None, (0, 1), 1, 1, True),
    (1, 2, (0, 1), 0, 1, True),       # epochs take slices of a pass
    (0, None, (1, 3), 0, 3, True),    # the middle of three data-parallel ranks
    (3, None, (2, 3), 2, 3, False),
    (0, None, (4, 5), 0, 5, True),    # batch 2 of 5 rows gives rank 4 an empty share
])
def test_the_short_path_matches_the_general_one(epoch, steps_per_epoch, shard, skip,
                                                 replicas, shuffle):
    data = _data()
    batch = 2 if shard == (4, 5) else 5
    plan = EpochPlan(epoch, batch, steps_per_epoch, 7, shuffle, shard, 1, replicas, skip, CPU)
    assert feed_mod._plain(data, plan)
    feed, got = _fed(data, plan)
    _same(got, _general(data, plan))
    assert feed.steps - skip == len(got) > 0


@pytest.mark.parametrize("change", ["accumulate", "sample_weight", "uneven shard", "two inputs"])
def test_other_data_takes_the_general_path(change):
    data = _data(sample_weight=change == "sample_weight")
    shard = Shard(0, 2, bounds=lambda n: (0, n - 1)) if change == "uneven shard" else (0, 1)
    if change == "two inputs":
        data = ArrayData([data.xs[0], data.xs[0] * 2], data.ys)
    plan = EpochPlan(0, 5, None, 7, True, shard, 2 if change == "accumulate" else 1, 1, 0, CPU)
    assert not feed_mod._plain(data, plan)
    _same(_fed(data, plan)[1], _general(data, plan))


@pytest.mark.parametrize("epoch,steps_per_epoch,skip,window", [
    (2, None, 1, (2, 5, 23)),   # epoch 3, one step already trained: pass 2 from sample 5
    (1, 2, 0, (0, 10, 20)),     # 2-step epochs: the second takes steps 2-3 of pass 0
])
def test_the_steps_read_the_epochs_window_of_its_permutation(epoch, steps_per_epoch, skip,
                                                              window):
    from bigtrain.engine.data import epoch_permutation
    ids = torch.arange(23)
    data = ArrayData([ids.float()[:, None]], [ids])
    plan = EpochPlan(epoch, 5, steps_per_epoch, 7, True, (0, 1), 1, 1, skip, CPU)
    _, got = _fed(data, plan)
    data_pass, start, stop = window
    expected = epoch_permutation(23, 7, data_pass, True)[start:stop]
    assert torch.equal(torch.cat([micro[0][1] for _, micro, _ in got]), expected)
