"""A user's own callback (rank 0 only, as every Keras callback runs) under 2 gloo ranks: it
reads and sets the model's weights and stops training as it does in one process.

Each case runs the engine on 2 ranks (tests.dist.run_ranks) and once in this process with the
same global batch; weights, losses and stopping epochs must agree.
"""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.api.training import make_task, prepare_data
from bigtrain.callbacks import Callback, LambdaCallback, TerminateOnNaN
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD
from tests.dist import run_ranks

pytestmark = pytest.mark.filterwarnings("ignore")
RANKS = dict(timeout=40, pg_timeout=8)  # a rank left waiting fails in seconds, not minutes


class ReadWeights(Callback):
    """Keeps what `self.model.get_weights()` gives at every epoch end."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(self.model.get_weights())


class Shrink(Callback):
    """Halves every weight at the end of epoch 1 (through set_weights)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.model.set_weights([w * 0.5 for w in self.model.get_weights()])


class BatchLosses(Callback):
    """Keeps the loss of every on_batch_end's logs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_batch_end(self, batch, logs=None):
        self.seen.append(logs["loss"])


class RestoreFirst(Callback):
    """A Keras idiom: keep one epoch's weights, put them back in on_train_end."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.first = self.model.get_weights()

    def on_train_end(self, logs=None):
        self.model.set_weights(self.first)


def _data(overflow: bool = False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype("float32")
    if overflow:
        x[40] = 3e38  # global batch 2, the second rank's half: its loss overflows to inf
    return x, rng.integers(0, 3, 64)


def _callbacks(kind: str, model):
    if kind == "read":
        return [ReadWeights()]
    if kind == "shrink":
        return [Shrink()]
    if kind == "batch_logs":
        return [BatchLosses()]
    if kind == "restore_first":
        return [RestoreFirst()]
    if kind == "lambda_stop":
        def stop(epoch, logs):
            model.stop_training = epoch == 1 or model.stop_training
        return [LambdaCallback(on_epoch_end=stop)]
    return [TerminateOnNaN()]


def _fit(kind: str, strategy: str | None, epochs: int = 4):
    """(history losses, epochs run, final weights, what the first callback kept); in one
    process when `strategy` is None, else on this rank of run_ranks."""
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(10,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(8, activation="relu")(inp)))
    model.compile(optimizer=SGD(0.3), loss="sparse_categorical_crossentropy")
    x, y = _data(overflow=kind == "nan")
    cfg = FitConfig(epochs=epochs, batch_size=16, shuffle=False, verbose=0,
                    terminate_on_nan=kind != "nan")
    callbacks = _callbacks(kind, model)
    task = make_task(model, prepare_data(model, x, y), None, cfg, callbacks,
                     split=strategy is not None)
    if strategy is None:
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
        result = run_rank(task, resolve_strategy(strategy), model, env)
    state = {k: v.numpy() if hasattr(v, "numpy") else v
             for k, v in (result.state_dict or {}).items()}
    kept = getattr(callbacks[0], "seen", None)
    return result.history.get("loss"), result.epochs, state, kept


def _on_ranks(rank, world, kind, strategy):
    return _fit(kind, strategy)


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(np.asarray(a[k], dtype=np.float64) - b[k]).max()) for k in a)


@pytest.mark.parametrize("strategy", ["zero3", "pipeline"])
def test_get_weights_in_a_users_epoch_end_hook(strategy):
    """Rank 0 read the split weights alone: the fit hung until the collective timed out."""
    _, _, _, one = _fit("read", None)
    (_, _, _, got), _ = run_ranks(_on_ranks, 2, "read", strategy, **RANKS)
    assert len(got) == len(one) == 4
    assert np.abs(one[0][0] - one[3][0]).max() > 1e-2  # the epochs can be told apart
    for a, b in zip(one, got):
        for wa, wb in zip(a, b):
            np.testing.assert_allclose(wb, wa, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "zero3", "ddp_cpu_optimizer"])
def test_set_weights_in_a_users_hook_reaches_every_rank(strategy):
    """ddp: only rank 0's copy changed and the ranks trained apart (losses 1.0756, 1.0497
    against 1.0906, 1.0792 in one process; weights 0.067 off); zero3 hung."""
    loss_one, _, state_one, _ = _fit("shrink", None)
    loss_two, _, state_two, _ = run_ranks(_on_ranks, 2, "shrink", strategy, **RANKS)[0]
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
    assert _max_diff(state_one, state_two) < 1e-5


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_set_weights_in_on_train_end_is_the_fits_result(strategy):
    """zero3: rank 0 gathered the split weights alone after training, a hang until the
    timeout."""
    one = _fit("restore_first", None)[2]
    two = run_ranks(_on_ranks, 2, "restore_first", strategy, **RANKS)[0][2]
    assert _max_diff(one, two) < 1e-5


@pytest.mark.parametrize("kind", ["lambda_stop", "nan"])
def test_bigtrain_callbacks_running_user_code_stop_every_rank(kind):
    """LambdaCallback's stop and TerminateOnNaN's (with fit(terminate_on_nan=False)) were set
    on rank 0 alone: it left the loop and the other rank crashed ("Connection closed")."""
    _, epochs_one, _, _ = _fit(kind, None)
    results = run_ranks(_on_ranks, 2, kind, "ddp", **RANKS)
    assert [r[1] for r in results] == [epochs_one] * 2
    assert epochs_one == ([0, 1] if kind == "lambda_stop" else [0])


def test_batch_logs_are_the_global_batchs():
    """Rank 0's batch logs covered its half of each batch: 1.0754, 1.4833 against 1.1327,
    1.2894 in one process."""
    one = _fit("batch_logs", None)[3]
    got = run_ranks(_on_ranks, 2, "batch_logs", "ddp", **RANKS)[0][3]
    np.testing.assert_allclose(got, one, rtol=1e-5)
