"""Model.save keeps a learning-rate schedule's step count after a fit on several processes
whose optimizer state stays with its ranks (ddp_cpu_optimizer's host optimizer), as a Keras
file keeps the optimizer's `iterations`: the loaded model continues the schedule where the
ranks left it. SGD without momentum holds no other state, so the weights match Keras 3
(torch backend) fit(epochs=4) exactly."""
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import bigtrain  # noqa: E402
import bigtrain.optimizers as bo  # noqa: E402
from bigtrain.layers import Dense, Input  # noqa: E402
from bigtrain.models import Model, load_model  # noqa: E402
from bigtrain.optimizers import schedules  # noqa: E402

from tests.engine.carry_data import FIT, LOSS, W0, X, Y  # noqa: E402
DECAY = (0.5, 3, 0.5)  # ExponentialDecay: the rate halves every 3 steps


def keras_weights(epochs: int):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    model.set_weights(W0)
    rate = keras.optimizers.schedules.ExponentialDecay(*DECAY)
    model.compile(optimizer=keras.optimizers.SGD(rate), loss=LOSS)
    model.fit(X, Y, epochs=epochs, **FIT)
    return model.get_weights()


def test_a_saved_model_continues_the_schedule_of_the_ranks(tmp_path):
    """The loaded model restarted the schedule at step 0 (start_step was not saved)."""
    bigtrain.clear_session()
    inp = Input(shape=(6,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.set_weights(W0)
    model.compile(optimizer=bo.SGD(schedules.ExponentialDecay(*DECAY)), loss=LOSS)
    path = str(tmp_path / "m.bigtrain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ranks' optimizer state is not kept
        model.fit(X, Y, epochs=2, strategy="ddp_cpu_optimizer", devices=2, timeout=60, **FIT)
        model.save(path)
        loaded = load_model(path)
        loaded.fit(X, Y, epochs=2, **FIT)
    for a, b in zip(loaded.get_weights(), keras_weights(4)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
