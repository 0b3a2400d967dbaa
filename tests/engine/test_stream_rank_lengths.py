"""Ranks that each read their own stream of unknown length (a generator made on every rank
under `bigtrain run`, an IterableDataset that reads by rank) and whose streams end at
different batches: every rank stops where the shortest ends, and rank 0 warns once naming
each rank's batches. Before, the longer rank ran a step alone and gloo aborted the job on
the collective mismatch ("Received data size doesn't match expected size").

Each case runs the engine on 2 gloo ranks (tests.dist.run_ranks) and once in this process on
the shortest stream; losses and weights must agree.
"""
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

import bigtrain
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD
from tests.dist import run_ranks

RANKS = dict(timeout=60, pg_timeout=8)  # a rank left waiting fails in seconds, not minutes
BATCH = 8


def _batches(n: int):
    """A generator of `n` global batches, the same first batches whatever `n`."""
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield rng.normal(size=(BATCH, 4)).astype("float32"), rng.integers(0, 3, BATCH)


class _Samples(IterableDataset):
    """`n` samples (no len(): a stream of unknown length), the same first ones whatever `n`."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        rng = np.random.default_rng(1)
        for _ in range(self.n):
            yield rng.normal(size=4).astype("float32"), int(rng.integers(0, 3))


def _source(kind: str, batches: int):
    return _batches(batches) if kind == "generator" else _Samples(batches * BATCH)


def _fit(kind: str, batches: int, epochs: int, ranks: bool):
    """(loss history, final weights, warnings rank 0 saw) of a ddp fit on this rank of
    run_ranks (`ranks`), else in one process."""
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(5, activation="relu")(inp)))
    model.compile(optimizer=SGD(0.2), loss="sparse_categorical_crossentropy")
    cfg = FitConfig(epochs=epochs, batch_size=BATCH, shuffle=False, verbose=0)
    task = make_task(model, prepare_data(model, _source(kind, batches), None), None, cfg, [],
                     split=ranks)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if not ranks:
            from bigtrain.engine.loop import train
            from bigtrain.parallel.base import Strategy
            result = train(task, Strategy(), model)
        else:
            from bigtrain.engine.loop import run_rank
            from bigtrain.parallel import resolve_strategy
            from bigtrain.parallel.base import DistEnv
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            env = DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                          device=torch.device("cpu"))
            result = run_rank(task, resolve_strategy("ddp"), model, env)
    state = {k: v.numpy() for k, v in (result.state_dict or {}).items()}
    notes = [str(w.message) for w in seen if "streams gave different" in str(w.message)]
    return result.history["loss"], state, notes


def _on_ranks(rank, world, kind, lengths, epochs):
    return _fit(kind, lengths[rank], epochs, ranks=True)


@pytest.mark.parametrize("kind,lengths", [("generator", (3, 5)), ("generator", (5, 3)),
                                          ("iterable", (4, 2))])
def test_ranks_stop_where_the_shortest_stream_ends(kind, lengths):
    epochs = 1 if kind == "generator" else 2  # an IterableDataset is read again each epoch
    loss_one, state_one, _ = _fit(kind, min(lengths), epochs, ranks=False)
    results = run_ranks(_on_ranks, 2, kind, lengths, epochs, **RANKS)
    for loss, state, _ in results:
        np.testing.assert_allclose(loss, loss_one, rtol=1e-5)
    state_two = results[0][1]
    assert set(state_two) == set(state_one)
    for k in state_one:
        np.testing.assert_allclose(state_two[k], state_one[k], atol=1e-5)
    notes = results[0][2]
    short, long = (0, 1) if lengths[0] < lengths[1] else (1, 0)
    assert len(notes) == 1, notes  # once per fit, not once per epoch
    assert f"rank {short}: {min(lengths)}" in notes[0], notes
    assert f"rank {long}: more than {min(lengths)}" in notes[0], notes
    assert results[1][2] == []  # rank 0 alone warns


def test_streams_of_the_same_length_train_every_batch_without_a_warning():
    loss_one, state_one, _ = _fit("generator", 4, 1, ranks=False)
    results = run_ranks(_on_ranks, 2, "generator", (4, 4), 1, **RANKS)
    np.testing.assert_allclose(results[0][0], loss_one, rtol=1e-5)
    for k in state_one:
        np.testing.assert_allclose(results[0][1][k], state_one[k], atol=1e-5)
    assert results[0][2] == [] and results[1][2] == []


def _asks_on_ranks(rank, world, kind):
    """How often this rank asked the others whether they still have a batch."""
    from bigtrain.engine import feed
    asked = []
    ask = feed.ShortestStream.__call__

    def counted(self, *args):
        asked.append(args)
        return ask(self, *args)
    feed.ShortestStream.__call__ = counted
    bigtrain.clear_session()
    inp = Input(shape=(4,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer=SGD(0.2), loss="sparse_categorical_crossentropy")
    if kind == "arrays":
        x, y = (np.concatenate(p) for p in zip(*_batches(3)))
        data = prepare_data(model, x, y)
    else:
        data = prepare_data(model, list(_batches(3)) if kind == "list" else _batches(3), None)
    cfg = FitConfig(epochs=2 if kind != "generator" else 1, batch_size=BATCH, shuffle=False,
                    verbose=0)
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                  device=torch.device("cpu"))
    history = run_rank(make_task(model, data, None, cfg, [], split=True),
                       resolve_strategy("ddp"), model, env).history
    return len(asked), len(history["loss"])


@pytest.mark.parametrize("kind,asks", [("arrays", 0), ("list", 0), ("generator", 4)])
def test_only_streams_of_unknown_length_ask_the_other_ranks(kind, asks):
    """Arrays and a list of batches (its length known) pay nothing per step; a generator of
    3 batches asks before each step and once more to find its end."""
    for asked, epochs in run_ranks(_asks_on_ranks, 2, kind, **RANKS):
        assert asked == asks and epochs == (1 if kind == "generator" else 2)
