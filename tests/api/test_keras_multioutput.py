"""A model of two outputs with per-output losses, loss_weights and sample_weight held to
Keras 3 (torch backend): History's total and "<output>_loss" entries, evaluate's, and the
trained weights."""
import keras
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 4)).astype("float32")
Y1 = RNG.normal(size=(20, 2)).astype("float32")
Y2 = RNG.integers(0, 3, 20)
SW = RNG.uniform(0.1, 2.0, 20).astype("float32")
SW2 = RNG.uniform(0.1, 2.0, 20).astype("float32")


def _build(L, inp):
    h = L.Dense(5, activation="tanh")(inp)
    return [L.Dense(2, name="reg")(h), L.Dense(3, activation="softmax", name="cls")(h)]


def _pair():
    keras.utils.set_random_seed(0)
    ki = keras.Input((4,))
    km = keras.Model(ki, _build(keras.layers, ki))
    bi = B.Input((4,))
    bm = Model(bi, _build(B, bi))
    bm.set_weights(km.get_weights())
    losses = ["mse", "sparse_categorical_crossentropy"]
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses, loss_weights=[1.0, 0.5])
    bm.compile(optimizer="sgd", learning_rate=0.1, loss=losses, loss_weights=[1.0, 0.5])
    return km, bm


def _same_logs(got: dict, want: dict):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("weights", ["none", "one", "per_output", "per_output_none"])
def test_fit_and_evaluate_log_keras_losses(weights):
    sw = {"none": None, "one": SW, "per_output": [SW, SW2],
          "per_output_none": [None, SW2]}[weights]
    km, bm = _pair()
    kw = dict(sample_weight=sw, batch_size=8, epochs=2, shuffle=False, verbose=0)
    kh = km.fit(X, [Y1, Y2], **kw).history
    bh = bm.fit(X, [Y1, Y2], **kw).history
    _same_logs(bh, kh)
    for a, b in zip(km.get_weights(), bm.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-5)
    ke = km.evaluate(X, [Y1, Y2], sample_weight=sw, verbose=0, return_dict=True)
    be = bm.evaluate(X, [Y1, Y2], sample_weight=sw, return_dict=True)
    _same_logs(be, ke)


def test_sample_weight_by_output_name_equals_the_list():
    km, bm = _pair()
    by_name = bm.evaluate(X, [Y1, Y2], sample_weight={"cls": SW2, "reg": SW},
                          return_dict=True)
    by_list = bm.evaluate(X, [Y1, Y2], sample_weight=[SW, SW2], return_dict=True)
    _same_logs(by_name, by_list)


def test_validation_data_with_per_output_weights():
    km, bm = _pair()
    kw = dict(validation_data=(X[:8], [Y1[:8], Y2[:8]], [SW[:8], SW2[:8]]), batch_size=8,
              epochs=1, shuffle=False, verbose=0)
    kh = km.fit(X, [Y1, Y2], **kw).history
    bh = bm.fit(X, [Y1, Y2], **kw).history
    _same_logs(bh, kh)


@pytest.mark.parametrize("sw,match", [([SW], "2 outputs"), ({"nope": SW}, "not outputs"),
                                      ([SW, SW2[:5]], "same length")])
def test_bad_per_output_weights_fail_clearly(sw, match):
    _, bm = _pair()
    with pytest.raises(ValueError, match=match):
        bm.fit(X, [Y1, Y2], sample_weight=sw, epochs=1, verbose=0)
