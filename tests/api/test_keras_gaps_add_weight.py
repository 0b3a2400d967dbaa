"""`add_weight(regularizer=..., constraint=...)` in a user's Layer subclass, held against
Keras 3 (torch backend): the penalty joins the logged loss (validation and evaluate too)
and `layer.losses`, the constraint projects the weight after every step, as a built-in
layer's kernel_regularizer/kernel_constraint; the trained weights match Keras's."""
import keras
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain import constraints as bc
from bigtrain import optimizers as bo
from bigtrain import regularizers as br
from bigtrain.models import Model

TOL = 1e-5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.normal(size=(32, 3)).astype("float32")
FIT = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)


def _linear(L, regularizer, constraint, bias_regularizer=None):
    """x @ w + b with add_weight's options, built on keras.layers.Layer or bigtrain's."""
    class Linear(L.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 3), initializer="random_normal",
                                     regularizer=regularizer, constraint=constraint)
            self.b = self.add_weight(shape=(3,), initializer="ones",
                                     regularizer=bias_regularizer)
            self.frozen = self.add_weight(shape=(3,), initializer="ones", trainable=False,
                                          regularizer=bias_regularizer)

        def call(self, x):
            return x @ self.w + self.b * self.frozen

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], 3)
    return Linear


def _pair(k_opts, b_opts):
    keras.utils.set_random_seed(0)
    ki = keras.Input((4,))
    km = keras.Model(ki, _linear(keras.layers, *k_opts)(name="lin")(ki))
    bi = B.Input(shape=(4,))
    bm = Model(bi, _linear(B, *b_opts)(name="lin")(bi))
    bm.set_weights(km.get_weights())
    km.compile(optimizer=keras.optimizers.SGD(0.3), loss="mse")
    bm.compile(optimizer=bo.SGD(0.3), loss="mse")
    return km, bm


def _diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


CASES = [
    ((keras.regularizers.L2(0.2), None, keras.regularizers.L1(0.1)),
     (br.L2(0.2), None, br.L1(0.1))),
    ((None, keras.constraints.MaxNorm(0.4), None), (None, bc.MaxNorm(0.4), None)),
    (("l2", keras.constraints.UnitNorm(axis=1), None),
     ("l2", bc.UnitNorm(axis=1), None)),
]


@pytest.mark.parametrize("k_opts,b_opts", CASES)
def test_add_weight_options_match_keras(k_opts, b_opts):
    km, bm = _pair(k_opts, b_opts)
    hk = km.fit(X, Y, validation_data=(X, Y), **FIT).history
    hb = bm.fit(X, Y, validation_data=(X, Y), **FIT).history
    for key in ("loss", "val_loss"):
        assert np.allclose(hk[key], hb[key], atol=TOL), (key, hk[key], hb[key])
    assert _diff(km.get_weights(), bm.get_weights()) <= TOL
    assert abs(km.evaluate(X, Y, verbose=0) - bm.evaluate(X, Y)) <= TOL
    _, plain = _pair((None, None, None), (None, None, None))
    plain.fit(X, Y, **FIT)
    assert _diff(plain.get_weights(), bm.get_weights()) > 100 * TOL  # the options acted


def test_layer_losses_hold_the_weight_penalties():
    km, bm = _pair(CASES[0][0], CASES[0][1])
    k = sorted(float(v) for v in km.get_layer("lin").losses)
    b = sorted(float(v) for v in bm.get_layer("lin").losses)
    assert len(b) == 2 and np.allclose(k, b, atol=TOL), (k, b)  # w and b, not the frozen one
