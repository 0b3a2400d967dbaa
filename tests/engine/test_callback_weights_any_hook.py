"""A user's callback reads and sets the weights in any training hook of a fit on 2 ranks
whose strategy splits them (zero3 shards, tensor-parallel shards, pipeline stages), as it
does in one process; and a callback that reads none costs no gather.

The oracle is the same fit in one process: what the hooks read agrees to 1e-6, and a
set_weights in a batch hook changes the training (losses, final weights) the same way.
"""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.callbacks import Callback
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD
from tests.dist import run_ranks

pytestmark = pytest.mark.filterwarnings("ignore")
SPLIT = ["zero3", "tensor", "pipeline"]  # every rank holds only part of the weights
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 10)).astype("float32")
Y = rng.integers(0, 4, 64)


class ReadEverywhere(Callback):
    """Keeps `get_weights()` from every kind of training hook (rank 0 only, as Keras)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def _read(self, where):
        self.seen.append((where, self.model.get_weights()))

    def on_train_begin(self, logs=None):
        self._read("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self._read(f"epoch_begin {epoch}")

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2:
            self._read(f"batch_begin {batch}")

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            self._read(f"batch_end {batch}")

    def on_train_end(self, logs=None):
        self._read("train_end")


class ShrinkMidEpoch(Callback):
    """Halves every weight after batch 2 of epoch 1, then reads them back."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 2:
            self.model.set_weights([w * 0.5 for w in self.model.get_weights()])
            self.seen.append(self.model.get_weights())  # the new values, as in one process


class EpochLosses(Callback):
    """Reads the logs at epoch ends, never the weights."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(logs["loss"])


def _model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(10,))
    # 8 and 4 units: both Dense layers split evenly over 2 tensor-parallel ranks
    model = Model(inp, Dense(4, activation="softmax")(Dense(8, activation="relu")(inp)))
    model.compile(optimizer=SGD(0.3), loss="sparse_categorical_crossentropy")
    return model


def _fit(callback, **kw):
    """(history losses, final weights); `callback` comes back with what its hooks kept."""
    model = _model()
    history = model.fit(X, Y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                        callbacks=[callback], **kw)
    return history.history["loss"], model.get_weights()


def _assert_same(got, want, atol=1e-6):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=atol)


@pytest.mark.parametrize("strategy", SPLIT)
def test_get_weights_in_every_training_hook(strategy):
    """Before: rank 0 refused to read split weights outside on_epoch_end ("reads the
    model's weights on rank 0 alone ... splits them over the ranks") and the other rank
    failed with "Connection closed by peer"."""
    one, two = ReadEverywhere(), ReadEverywhere()
    _fit(one)
    _fit(two, strategy=strategy, devices=2, timeout=60)
    assert [w for w, _ in two.seen] == [w for w, _ in one.seen]
    assert len(one.seen) == 8  # train begin, 2 x (epoch begin, batch begin, end), end
    # the reads can be told apart: training moved the weights between them
    assert np.abs(one.seen[1][1][0] - one.seen[3][1][0]).max() > 1e-3
    for (_, got), (_, want) in zip(two.seen, one.seen):
        _assert_same(got, want)


@pytest.mark.parametrize("strategy", SPLIT)
def test_set_weights_in_a_batch_hook_trains_as_one_process(strategy):
    """Before: tensor and pipeline refused it ("cannot load a whole model into its
    running parts"); under zero3 the get_weights before it failed on rank 0."""
    one, two = ShrinkMidEpoch(), ShrinkMidEpoch()
    loss_one, weights_one = _fit(one)
    loss_two, weights_two = _fit(two, strategy=strategy, devices=2, timeout=60)
    _, untouched = _fit(EpochLosses())
    # the check can tell the shrink apart from no shrink
    assert max(np.abs(a - b).max() for a, b in zip(weights_one, untouched)) > 1e-3
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
    _assert_same(weights_two, weights_one, atol=1e-5)
    _assert_same(two.seen[0], one.seen[0])


def _count_gathers(rank, world, reads: bool):
    """Full-state gathers on this rank in a 3-epoch zero3 fit with one user callback."""
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv

    class ReadAtEpochEnd(EpochLosses):
        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(self.model.get_weights()[0])

    strategy = resolve_strategy("zero3")
    calls, gather = [0], strategy.full_state_dict

    def counted(module):
        calls[0] += 1
        return gather(module)
    strategy.full_state_dict = counted
    model = _model()
    callback = ReadAtEpochEnd() if reads else EpochLosses()
    cfg = FitConfig(epochs=3, batch_size=16, shuffle=False, verbose=0)
    task = make_task(model, prepare_data(model, X, Y), None, cfg, [callback], split=True)
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                  device=torch.device("cpu"))
    run_rank(task, strategy, model, env)
    return calls[0], len(callback.seen)


def test_epoch_end_callback_that_reads_no_weights_costs_no_gather():
    """Before: every epoch end gathered the sharded weights for a user's on_epoch_end that
    never read them: 4 gathers per rank for 3 epochs (1 is the fit's result)."""
    quiet = run_ranks(_count_gathers, 2, False, timeout=40, pg_timeout=8)
    reading = run_ranks(_count_gathers, 2, True, timeout=40, pg_timeout=8)
    assert quiet == [(1, 3), (1, 0)]  # only rank 0 runs the callback
    assert reading == [(4, 3), (4, 0)]  # one gather per read, on every rank


class EveryRankShrink(Callback):
    """Runs on every rank: reads the weights at each epoch end, halves them after epoch 1."""

    main_process_only = False

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        weights = self.model.get_weights()
        self.seen.append(weights)
        if epoch == 1:
            self.model.set_weights([w * 0.5 for w in weights])


def _every_rank_fit(rank, world, strategy):
    """(history losses, final weights on rank 0, this rank's reads) of a 3-epoch fit."""
    model, callback = _model(), EveryRankShrink()
    if strategy is None:
        history = model.fit(X, Y, epochs=3, batch_size=16, shuffle=False, verbose=0,
                            callbacks=[callback])
        return history.history["loss"], model.get_weights(), callback.seen
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    cfg = FitConfig(epochs=3, batch_size=16, shuffle=False, verbose=0)
    task = make_task(model, prepare_data(model, X, Y), None, cfg, [callback], split=True)
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                  device=torch.device("cpu"))
    result = run_rank(task, resolve_strategy(strategy), model, env)
    return result.history["loss"], result.state_dict, callback.seen


@pytest.mark.parametrize("strategy", ["zero3", "pipeline"])
def test_every_rank_callback_reads_whole_weights_on_every_rank(strategy):
    """A callback with main_process_only = False: rank 1 got no weights from the gather
    (zero3 and pipeline gather to rank 0) and failed with KeyError
    'layers.dense_1.linear.weight'."""
    loss_one, weights_one, seen_one = _every_rank_fit(0, 1, None)
    ranks = run_ranks(_every_rank_fit, 2, strategy, timeout=40, pg_timeout=8)
    for loss, _, seen in ranks:
        np.testing.assert_allclose(loss, loss_one, rtol=1e-5)
        for got, want in zip(seen, seen_one, strict=True):
            _assert_same(got, want)
    state = {k: v.numpy() for k, v in ranks[0][1].items()}
    model = _model()
    model.net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    _assert_same(model.get_weights(), weights_one, atol=1e-5)


def test_set_weights_is_refused_where_a_strategy_cannot_load_mid_fit():
    """A strategy that splits the weights but cannot load a whole state into its running
    parts keeps the clear error, on every rank, before any collective."""
    from types import SimpleNamespace

    from bigtrain.engine.callbacks.rank0_weights import share_weights
    from bigtrain.parallel.base import Strategy

    class GathersOnly(Strategy):
        name = "gathers_only"

        def full_state_dict(self, module):
            return {}

    live = SimpleNamespace(strategy=GathersOnly(), final_state={"w": torch.ones(1)})
    with pytest.raises(RuntimeError, match="'gathers_only', which cannot load a whole model"):
        share_weights(live, None, True, torch.device("cpu"))
