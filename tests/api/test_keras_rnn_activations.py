"""SimpleRNN, LSTM and GRU with an `activation` other than tanh or a `recurrent_activation`
other than sigmoid (hard_sigmoid, Keras 2's default; relu; softsign; linear...), which run
step by step, held against Keras 3 (torch backend) with the same weights: outputs (masked,
backwards and bidirectional too), returned states, the loss and weights after fit, and a
save/load round trip."""
import keras
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain import optimizers as bo
from bigtrain.models import Model, load_model

TOL = 1e-5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 5, 3)).astype("float32")
Y = RNG.normal(size=(8, 4)).astype("float32")

RECURRENT = [
    ("LSTM", {"recurrent_activation": "hard_sigmoid"}),
    ("LSTM", {"recurrent_activation": "relu", "activation": "tanh", "use_bias": False}),
    ("GRU", {"recurrent_activation": "hard_sigmoid"}),
    ("GRU", {"recurrent_activation": "tanh", "reset_after": False}),
    ("GRU", {"recurrent_activation": "relu", "go_backwards": True}),
]
ACTIVATION = [
    ("SimpleRNN", {"activation": "sigmoid"}),
    ("SimpleRNN", {"activation": None, "go_backwards": True}),
    ("LSTM", {"activation": "relu"}),
    ("LSTM", {"activation": "softsign", "recurrent_activation": "hard_sigmoid"}),
    ("GRU", {"activation": "relu"}),
    ("GRU", {"activation": "elu", "reset_after": False}),
]
# (kind, args, SGD learning rate) trained for two epochs against Keras
FITS = [(*c, 0.3) for c in RECURRENT[:3]] + [(*c, 0.1) for c in ACTIVATION[::2]]


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


@pytest.mark.parametrize("kind,args", RECURRENT + ACTIVATION)
def test_outputs_and_states_match_keras(kind, args):
    km, bm = _pair(kind, args, return_sequences=True, return_state=True)
    x = _masked_x()
    k = [np.asarray(t.detach().cpu()) for t in km(x)]
    b = [t.detach().numpy() for t in bm(x)]
    assert len(k) == len(b) and _diff(k, b) <= TOL


@pytest.mark.parametrize("kind,args,lr", FITS)
def test_fit_matches_keras(kind, args, lr):
    km, bm = _pair(kind, args)
    km.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    bm.compile(optimizer=bo.SGD(lr), loss="mse")
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


def test_bidirectional_and_save_keep_the_activation(tmp_path):
    km, bm = _pair("LSTM", {"activation": "relu"}, wrap="Bidirectional")
    x = _masked_x()
    assert _diff([np.asarray(km(x).detach().cpu())], [bm(x).detach().numpy()]) <= TOL
    bm.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    assert _diff([again(x).detach().numpy()], [bm(x).detach().numpy()]) == 0


def test_unknown_or_non_elementwise_activations_are_refused():
    with pytest.raises(ValueError, match="recurrent_activation must be.*'hardsigmoid'"):
        B.LSTM(4, recurrent_activation="hardsigmoid")
    with pytest.raises(ValueError, match="recurrent_activation.*'softmax'"):
        B.GRU(4, recurrent_activation="softmax")
    with pytest.raises(ValueError, match="activation must be.*'softmax'"):
        B.SimpleRNN(4, activation="softmax")
    with pytest.raises(ValueError, match="activation must be.*'tanhh'"):
        B.LSTM(4, activation="tanhh")
