"""ReduceLROnPlateau or LearningRateScheduler with an optimizer built on a learning-rate
schedule: the schedule's step hook overwrote every rate the callback set, so the callback
did nothing and said nothing. Keras raises TypeError (the rate is not settable); bigtrain
raises it before training starts, on one process or several."""
import keras
import numpy as np
import pytest

import bigtrain
import bigtrain.callbacks as bcb
import bigtrain.optimizers as bo
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import schedules

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(32, 6)).astype("float32"), RNG.integers(0, 3, 32)


def _model(rate):
    bigtrain.set_seed(0)
    inp = Input((6,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer=bo.SGD(rate), loss="sparse_categorical_crossentropy")
    return model


def _callbacks():
    return [bcb.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=10.0),
            bcb.LearningRateScheduler(lambda epoch, lr: lr * 0.5)]


def test_keras_refuses_a_rate_callback_over_a_schedule():
    """The oracle: Keras's own fit stops with TypeError."""
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    model.compile(optimizer=keras.optimizers.SGD(
        keras.optimizers.schedules.ExponentialDecay(0.5, 3, 0.5)),
        loss="sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match="not settable"):
        model.fit(X, Y, epochs=3, batch_size=8, verbose=0,
                  callbacks=[keras.callbacks.LearningRateScheduler(lambda e, lr: lr * 0.5)])


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("devices", [1, 2])
def test_a_rate_callback_over_a_schedule_is_refused_before_training(index, devices):
    model = _model(schedules.ExponentialDecay(0.5, 3, 0.5))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(TypeError, match="not settable") as err:
        model.fit(X, Y, epochs=3, batch_size=8, verbose=0, callbacks=[_callbacks()[index]],
                  strategy="ddp" if devices > 1 else None, devices=devices)
    assert type(_callbacks()[index]).__name__ in str(err.value)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_a_float_rate_still_takes_the_callbacks():
    history = _model(0.5).fit(X, Y, epochs=3, batch_size=8, verbose=0, shuffle=False,
                              callbacks=_callbacks()[:1])
    assert history.history["learning_rate"][-1] < 0.5
