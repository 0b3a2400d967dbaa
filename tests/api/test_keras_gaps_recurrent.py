"""LSTM and GRU with a recurrent_activation other than sigmoid (hard_sigmoid, Keras 2's
default; relu; tanh), held against Keras 3 (torch backend) with the same weights: outputs
(masked and bidirectional too), returned states, and the loss and weights after fit."""
import keras
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain import optimizers as bo
from bigtrain.models import Model

TOL = 1e-5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 5, 3)).astype("float32")
Y = RNG.normal(size=(8, 4)).astype("float32")

CASES = [
    ("LSTM", {"recurrent_activation": "hard_sigmoid"}),
    ("LSTM", {"recurrent_activation": "relu", "activation": "tanh", "use_bias": False}),
    ("GRU", {"recurrent_activation": "hard_sigmoid"}),
    ("GRU", {"recurrent_activation": "tanh", "reset_after": False}),
    ("GRU", {"recurrent_activation": "relu", "go_backwards": True}),
]


def _pair(kind, args, wrap=None, **extra):
    keras.utils.set_random_seed(0)
    klayer = getattr(keras.layers, kind)(4, **args, **extra)
    blayer = getattr(B, kind)(4, **args, **extra)
    if wrap:
        klayer, blayer = getattr(keras.layers, wrap)(klayer), getattr(B, wrap)(blayer)
    ki, bi = keras.Input((5, 3)), B.Input(shape=(5, 3))
    km = keras.Model(ki, klayer(keras.layers.Masking()(ki)))
    bm = Model(bi, blayer(B.Masking()(bi)))
    bm.set_weights(km.get_weights())
    return km, bm


def _diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


def _masked_x():
    x = X.copy()
    x[1, 3:] = 0.0  # Masking: the last steps of row 1 are skipped
    return x


@pytest.mark.parametrize("kind,args", CASES)
def test_outputs_and_states_match_keras(kind, args):
    km, bm = _pair(kind, args, return_sequences=True, return_state=True)
    x = _masked_x()
    k = [np.asarray(t.detach().cpu()) for t in km(x)]
    b = [t.detach().numpy() for t in bm(x)]
    assert len(k) == len(b) and _diff(k, b) <= TOL


@pytest.mark.parametrize("kind,args", CASES[:3])
def test_fit_matches_keras(kind, args):
    km, bm = _pair(kind, args)
    km.compile(optimizer=keras.optimizers.SGD(0.3), loss="mse")
    bm.compile(optimizer=bo.SGD(0.3), loss="mse")
    fit = dict(batch_size=4, epochs=2, shuffle=False, verbose=0)
    hk = km.fit(_masked_x(), Y, **fit).history["loss"]
    hb = bm.fit(_masked_x(), Y, **fit).history["loss"]
    assert np.allclose(hk, hb, atol=TOL), (hk, hb)
    assert _diff(km.get_weights(), bm.get_weights()) <= TOL


def test_bidirectional_keeps_the_recurrent_activation():
    km, bm = _pair("LSTM", {"recurrent_activation": "hard_sigmoid"}, wrap="Bidirectional")
    x = _masked_x()
    assert _diff([np.asarray(km(x).detach().cpu())], [bm(x).detach().numpy()]) <= TOL
    layer = B.LSTM(4, recurrent_activation="hard_sigmoid")
    assert type(layer)(**layer.get_config()).recurrent_activation == "hard_sigmoid"


def test_unknown_recurrent_activation_is_refused():
    with pytest.raises(ValueError, match="recurrent_activation must be.*'hardsigmoid'"):
        B.LSTM(4, recurrent_activation="hardsigmoid")
    with pytest.raises(ValueError, match="recurrent_activation.*'softmax'"):
        B.GRU(4, recurrent_activation="softmax")
