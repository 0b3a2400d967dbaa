"""The ranks' random streams follow the user's seed: fit draws a base from the caller's
stream, each rank seeds from it and its data shard (bigtrain.parallel.seeds). Before, every
rank started at torch's default seed: runs after set_seed(0) and set_seed(1) drew the same
dropout masks, and all ranks drew the same masks for their different samples."""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.layers import Dense, Dropout, Input
from bigtrain.models import Model
from bigtrain.parallel.seeds import seed_rank, stream_seed
from tests.dist import run_ranks


def _launched_seed(monkeypatch, seed: int, devices: int, strategy: str = "ddp"):
    """The base seed `fit` hands its ranks after bigtrain.set_seed(seed) (launch stubbed),
    and the next number of the caller's stream."""
    from bigtrain.launch import launcher
    seen = []

    def no_launch(task, *a, **k):
        seen.append(task.rank_seed)
        raise RuntimeError("stub: no ranks")
    monkeypatch.setattr(launcher, "launch", no_launch)
    bigtrain.set_seed(seed)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(2, activation="softmax")(Dropout(0.5)(inp)))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.ones((8, 4), "float32"), np.zeros(8, "int64")
    with pytest.raises(RuntimeError, match="stub"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, strategy=strategy, devices=devices)
    return seen[0], float(torch.rand(()))


def test_fit_hands_its_ranks_a_base_drawn_from_the_users_seed(monkeypatch):
    first, after = _launched_seed(monkeypatch, 0, 2)
    again, after_again = _launched_seed(monkeypatch, 0, 2)
    other, _ = _launched_seed(monkeypatch, 1, 2)
    assert first is not None and first == again and after == after_again
    assert other != first


def _stream(rank, world, strategy: str, base: int):
    """This rank's first random number after seed_rank under `strategy` (set up here)."""
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    strat = resolve_strategy(strategy)
    strat.setup(DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                        device=torch.device("cpu")))
    try:
        seed_rank(base, strat)
        return float(torch.rand(())), tuple(strat.data_shard())
    finally:
        strat.teardown()


@pytest.mark.parametrize("strategy, shared", [("ddp", False), ("tensor", True)])
def test_ranks_draw_apart_unless_they_read_the_same_samples(strategy, shared):
    """ddp ranks read different samples: their masks differ; a tensor-parallel group reads
    the same ones, and its replicated activations need the same masks."""
    (a, shard_a), (b, shard_b) = run_ranks(_stream, 2, strategy, 7, timeout=90)
    assert (a == b) == shared and (shard_a == shard_b) == shared
    own = torch.Generator().manual_seed(stream_seed(7, shard_a[0]))
    assert a == float(torch.rand((), generator=own))
