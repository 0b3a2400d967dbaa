"""`model.optimizer.iterations`, as Keras 3 counts it: 0 after compile, then every optimizer
step of fit and train_on_batch, carried from one fit to the next (also a fit on two ranks),
read inside callbacks, kept by save/load_model, and back to 0 after a new compile."""
import os

import numpy as np
import pytest

import bigtrain
import bigtrain.optimizers as bopt
from bigtrain.callbacks import Callback
from bigtrain.models import load_model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from tests.api.test_lossmetric_metrics import _pair  # noqa: E402

RNG = np.random.default_rng(5)
X = RNG.normal(size=(40, 5)).astype("float32")
Y = RNG.normal(size=(40, 2)).astype("float32")
FIT = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)  # 3 steps an epoch


class _Steps(Callback):
    """The count a callback reads at each batch's end, as user code logs its step."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(int(self.model.optimizer.iterations))


def _compiled():
    kmodel, model = _pair(2, None)
    kmodel.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.compile(optimizer=bopt.Adam(), loss="mse")
    return kmodel, model


def test_iterations_counts_steps_as_keras():
    kmodel, model = _compiled()
    it, kit = model.optimizer.iterations, kmodel.optimizer.iterations
    assert int(it) == int(kit) == 0
    assert it.numpy() == kit.numpy() and it.numpy().dtype == kit.numpy().dtype
    assert f"{int(it)}" == "0" and str(it) == "0"
    ours, theirs = _Steps(), keras.callbacks.LambdaCallback()
    theirs.seen = []
    theirs.on_train_batch_end = lambda b, logs: theirs.seen.append(
        int(kmodel.optimizer.iterations))
    model.fit(X, Y, callbacks=[ours], **FIT)
    kmodel.fit(X, Y, callbacks=[theirs], **FIT)
    assert ours.seen == theirs.seen == [1, 2, 3, 4, 5, 6]
    assert int(model.optimizer.iterations) == int(kmodel.optimizer.iterations) == 6
    model.fit(X, Y, **FIT)  # a second fit goes on counting
    model.train_on_batch(X[:8], Y[:8])
    kmodel.fit(X, Y, **FIT)
    kmodel.train_on_batch(X[:8], Y[:8])
    assert int(model.optimizer.iterations) == int(kmodel.optimizer.iterations) == 13
    assert model.optimizer.iterations.numpy() == kmodel.optimizer.iterations.numpy()
    model.compile(optimizer=bopt.Adam(), loss="mse")  # a new optimizer starts at 0
    assert int(model.optimizer.iterations) == 0


def test_a_saved_model_keeps_its_count(tmp_path):
    _, model = _compiled()
    model.fit(X, Y, **FIT)
    model.save(str(tmp_path / "m.bigtrain"))
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    assert int(loaded.optimizer.iterations) == 6
    loaded.fit(X, Y, **FIT)
    assert int(loaded.optimizer.iterations) == 12


def _ranked():
    bigtrain.clear_session()
    return _compiled()[1]


@pytest.mark.parametrize("strategy", ["ddp", "zero1"])
def test_a_fit_on_two_ranks_counts_its_steps_and_the_next_fit_goes_on(strategy):
    model, steps = _ranked(), _Steps()
    model.fit(X, Y, strategy=strategy, devices=2, timeout=60, callbacks=[steps], **FIT)
    assert steps.seen == [1, 2, 3, 4, 5, 6]  # rank 0's callback, read back here
    assert int(model.optimizer.iterations) == 6
    model.fit(X, Y, **FIT)
    assert int(model.optimizer.iterations) == 12
