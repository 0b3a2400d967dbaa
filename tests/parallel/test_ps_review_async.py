"""Asynchronous parameter servers (ps_async / ps_ssp) with rank-local streams of unknown
length, and the step count they report.

Before, the workers all-reduced two numbers before every step to stop at the shortest
stream (the loop's ShortestStream), so every step waited for the slowest worker; now a
worker whose stream runs out tells the servers and the others stop at their next pull,
with no per-step collective. After the fit `optimizer.iterations` is the updates the
servers applied (every worker's pushes), where it was rank 0's steps alone.

Each case runs 2 workers + 1 server on gloo (tests.dist.run_ranks).
"""
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

import bigtrain
from bigtrain.api.training import make_task, prepare_data
from bigtrain.callbacks import Callback
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD
from tests.dist import run_ranks

RANKS = dict(timeout=60, pg_timeout=10)
BATCH = 16  # each worker's batches of its own stream
ENDLESS = 10 ** 7  # a stream no test reads to its end: it must stop where the other ends


class _Samples(IterableDataset):
    """`n` samples with no len() (a stream of unknown length), read again each epoch."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        rng = np.random.default_rng(1)
        for _ in range(self.n):
            yield rng.normal(size=4).astype("float32"), int(rng.integers(0, 3))


def _fit_on_ranks(rank, world, mode, lengths, epochs, data):
    """This rank's (ShortestStream asks, history loss, pushes, iterations, server updates,
    warnings) of a ParameterServer fit over rank-local streams of `lengths` batches."""
    from bigtrain.engine import feed
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import ParameterServer
    from bigtrain.parallel.base import DistEnv
    asked = []
    ask = feed.ShortestStream.__call__
    feed.ShortestStream.__call__ = lambda self, *a: asked.append(1) or ask(self, *a)
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(5, activation="relu")(inp)))
    model.compile(optimizer=SGD(0.1), loss="sparse_categorical_crossentropy")
    cfg = FitConfig(epochs=epochs, batch_size=BATCH, shuffle=False, verbose=0)
    n = lengths[min(rank, len(lengths) - 1)] * BATCH if data == "stream" else None
    source = _Samples(n) if n else (np.random.default_rng(2).normal(size=(64, 4)).astype(
        "float32"), np.random.default_rng(3).integers(0, 3, 64))
    split = data == "stream"
    task = make_task(model, prepare_data(model, source if split else source[0],
                                         None if split else source[1]), None, cfg, [],
                     split=split)
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                  device=torch.device("cpu"))
    strategy = ParameterServer(servers=1, mode=mode, staleness=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = run_rank(task, strategy, model, env)
    stats = strategy.stats()
    notes = [str(w.message) for w in seen if "stream ended" in str(w.message)]
    return (len(asked), result.history.get("loss") if result.history else None,
            stats.get("pushes"), result.iterations, stats.get("updates"), notes)


@pytest.mark.parametrize("mode,lengths", [("asp", (3, ENDLESS)), ("ssp", (ENDLESS, 3))])
def test_async_workers_end_uneven_streams_without_a_per_step_collective(mode, lengths):
    results = run_ranks(_fit_on_ranks, 3, mode, lengths, 2, "stream", **RANKS)
    workers, server = results[:2], results[2]
    assert [r[0] for r in workers] == [0, 0], "the workers met before every step"
    pushes = [r[2] for r in workers]
    short, long = (0, 1) if lengths[0] < lengths[1] else (1, 0)
    assert pushes[short] == 2 * 3, pushes  # its whole stream, both epochs
    # the endless one stopped soon after (the steps it took before the news arrived)
    assert 2 <= pushes[long] < 2 * 200, pushes
    assert workers[long][5], "no warning where a worker's further batches went untrained"
    assert all(np.isfinite(workers[0][1])) and len(workers[0][1]) == 2
    assert server[4] == sum(pushes)  # every push an update on the server
    assert workers[0][3] == sum(pushes)  # iterations: the updates the servers applied


@pytest.mark.parametrize("mode", ["asp", "ssp"])
def test_async_iterations_count_the_updates_the_servers_applied(mode):
    results = run_ranks(_fit_on_ranks, 3, mode, (0,), 2, "arrays", **RANKS)
    workers, server = results[:2], results[2]
    pushes = [r[2] for r in workers]
    assert pushes == [8, 8]  # 64 samples, global batches of 16: 4 steps an epoch, 2 epochs
    assert server[4] == 16  # every worker's push an update of its own
    assert workers[0][3] == 16, "iterations counted rank 0's steps, not the servers' updates"


class _ReadsWeights(Callback):
    """Rank 0 alone reads the weights after each epoch, while the other worker trains on."""

    def on_epoch_end(self, epoch, logs=None):
        self.sums = getattr(self, "sums", []) + [float(sum(abs(w).sum() for w in
                                                          self.model.get_weights()))]


@pytest.mark.parametrize("strategy", ["ps_async", "ps_ssp"])
def test_a_rank0_read_of_the_weights_mid_fit_does_not_wait_for_the_other_workers(strategy):
    # the end-of-fit wait for every worker's pushes (settle) is not part of reading the
    # weights, which rank 0 may do alone in a callback
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer=SGD(0.1), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)
    reads = _ReadsWeights()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, strategy=strategy, devices=3,
              timeout=60, callbacks=[reads])
    assert len(reads.sums) == 2 and all(np.isfinite(reads.sums))
    assert int(model.optimizer.iterations) == 16  # 2 workers x 4 steps x 2 epochs
