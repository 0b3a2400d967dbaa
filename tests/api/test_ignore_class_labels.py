"""Labels equal to the loss's ignore_class (Keras's SparseCategoricalCrossentropy(
ignore_class=-1), 255 for unlabelled pixels) pass the label check and are left out of the
loss, as in Keras; other labels outside the classes still get the clear error."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import bigtrain
from bigtrain import losses as bl
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

FIT = dict(batch_size=8, verbose=0, shuffle=False)


def _data(ignore: int, steps: int):
    """x (16, steps, 5); labels (16, steps) in [0, 3) with a quarter set to `ignore`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, steps, 5)).astype("float32")
    y = rng.integers(0, 3, (16, steps))
    y[rng.random(y.shape) < 0.25] = ignore
    return x, y


def _keras(loss, shape):
    keras.utils.set_random_seed(0)
    ki = keras.Input(shape)
    km = keras.Model(ki, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(4, activation="relu")(ki)))
    km.compile(optimizer="adam", loss=loss)
    return km


def _ours(loss, shape, weights):
    bigtrain.set_seed(0)
    inp = Input(shape=shape)
    model = Model(inp, Dense(3, activation="softmax")(Dense(4, activation="relu")(inp)))
    model.set_weights(weights)
    model.compile(optimizer="adam", loss=loss)
    return model


@pytest.mark.parametrize("ignore,steps", [(-1, 1), (255, 6)])
def test_ignored_labels_train_as_in_keras(ignore, steps):
    x, y = _data(ignore, steps)
    if steps == 1:  # one label per sample: (n,)
        x, y = x[:, 0], y[:, 0]
    km = _keras(keras.losses.SparseCategoricalCrossentropy(ignore_class=ignore), x.shape[1:])
    model = _ours(bl.SparseCategoricalCrossentropy(ignore_class=ignore), x.shape[1:],
                  km.get_weights())
    assert abs(model.evaluate(x, y) - km.evaluate(x, y, verbose=0)) < 1e-5
    km.fit(x, y, epochs=2, **FIT)
    model.fit(x, y, epochs=2, **FIT)
    for ours, theirs in zip(model.get_weights(), km.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_other_labels_outside_the_classes_still_fail():
    x, y = _data(-1, 1)
    x, y = x[:, 0], y[:, 0]
    y[3] = 7
    model = _ours(keras.losses.SparseCategoricalCrossentropy(ignore_class=-1), (5,),
                  _keras("mse", (5,)).get_weights())
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\].*\[0, 7\] besides "
                                         r"ignore_class=-1"):
        model.fit(x, y, epochs=1, **FIT)
    plain = _ours("sparse_categorical_crossentropy", (5,), model.get_weights())
    y[3] = 0
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\].*\[-1, 2\]"):
        plain.fit(x, y, epochs=1, **FIT)
