"""Activation names and activation layers held to Keras 3 (torch backend): every name
`keras.activations.get` accepts gives Keras's numbers in `Dense(activation=name)`, and
ReLU / LeakyReLU / PReLU / ELU / Softmax match Keras's layers, defaults, weight layout and a
training step."""
import keras
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain.models import Model, load_model

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(16, 5)) * 3).astype("float32")  # wide enough to reach every region
# names Keras accepts as a string but cannot call without more arguments
NEEDS_ARGUMENTS = {"threshold"}
NAMES = sorted(set(keras.src.activations.ALL_OBJECTS_DICT) - NEEDS_ARGUMENTS)


def _pair(build, x=X):
    """The same network in Keras and bigtrain, bigtrain holding Keras's weights."""
    keras.utils.set_random_seed(0)
    ki = keras.Input(x.shape[1:])
    km = keras.Model(ki, build(keras.layers, ki))
    bi = B.Input(x.shape[1:])
    bm = Model(bi, build(B, bi))
    bm.set_weights(km.get_weights())
    return km, bm


@pytest.mark.parametrize("name", NAMES)
def test_every_keras_activation_name_gives_keras_numbers(name):
    km, bm = _pair(lambda L, x: L.Dense(6, activation=name)(x))
    want = np.asarray(km(X).detach())
    got = bm.predict(X)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    km2, bm2 = _pair(lambda L, x: L.Activation(name)(L.Dense(6)(x)))
    np.testing.assert_allclose(bm2.predict(X), np.asarray(km2(X).detach()), atol=1e-5, rtol=1e-5)


def test_glu_halves_the_last_axis_in_the_symbolic_shape():
    out = B.Dense(6, activation="glu")(B.Input((5,)))
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="units must be even"):
        B.Dense(5, activation="glu")
    with pytest.raises(ValueError, match="halves the last axis"):
        B.Conv1D(4, 3, activation="glu")


def test_unknown_and_incomplete_activation_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown activation 'relux'.*valid names"):
        B.Dense(3, activation="relux")
    with pytest.raises(ValueError, match="threshold and default_value"):
        B.Activation("threshold")


LAYERS = {
    "relu": lambda L: L.ReLU(),
    "relu_max": lambda L: L.ReLU(max_value=1.5),
    "relu6": lambda L: L.ReLU(max_value=6.0),
    "relu_slope": lambda L: L.ReLU(negative_slope=0.1),
    "relu_all": lambda L: L.ReLU(max_value=4.0, negative_slope=0.2, threshold=0.5),
    "relu_threshold": lambda L: L.ReLU(threshold=1.0),
    "leaky_default": lambda L: L.LeakyReLU(),
    "leaky": lambda L: L.LeakyReLU(negative_slope=0.05),
    "elu_default": lambda L: L.ELU(),
    "elu": lambda L: L.ELU(alpha=0.4),
    "softmax": lambda L: L.Softmax(),
    "softmax_axis1": lambda L: L.Softmax(axis=1),
    "softmax_axes": lambda L: L.Softmax(axis=[1, 2]),
    "prelu": lambda L: L.PReLU(),
    "prelu_ones": lambda L: L.PReLU(alpha_initializer="ones"),
    "prelu_shared": lambda L: L.PReLU(shared_axes=[1]),
    "prelu_shared_int": lambda L: L.PReLU(shared_axes=2),
}
X3 = (RNG.normal(size=(8, 4, 3)) * 4).astype("float32")
Y3 = RNG.normal(size=(8, 4, 3)).astype("float32")


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_activation_layers_match_keras(key):
    """Outputs, weights (PReLU's alpha in Keras's shape) and two SGD steps."""
    km, bm = _pair(lambda L, x: LAYERS[key](L)(L.Dense(3)(x)), X3)
    assert [w.shape for w in bm.get_weights()] == [w.shape for w in km.get_weights()]
    np.testing.assert_allclose(bm.predict(X3), np.asarray(km(X3).detach()), atol=1e-5)
    w0 = km.get_weights()
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    bm.compile(optimizer="sgd", learning_rate=0.1, loss="mse")
    km.fit(X3, Y3, batch_size=4, epochs=1, shuffle=False, verbose=0)
    bm.fit(X3, Y3, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, k, b in zip(w0, km.get_weights(), bm.get_weights()):
        np.testing.assert_allclose(b, k, atol=1e-5)
    assert any(not np.array_equal(a, k) for a, k in zip(w0, km.get_weights()))


def test_prelu_alpha_is_keras_shaped_and_trained():
    km, bm = _pair(lambda L, x: L.PReLU(shared_axes=[1])(x), X3)
    assert [w.shape for w in bm.get_weights()] == [(1, 3)]
    alpha = np.array([[0.1, 0.5, 2.0]], "float32")
    km.set_weights([alpha])
    bm.set_weights([alpha])
    np.testing.assert_allclose(bm.predict(X3), np.asarray(km(X3).detach()), atol=1e-6)


def test_leaky_relu_layer_takes_keras_2_alpha():
    layer = B.LeakyReLU(alpha=0.1)
    x = torch.tensor([[-2.0, 3.0]])
    assert torch.allclose(layer(x), torch.tensor([[-0.2, 3.0]]))


@pytest.mark.parametrize("make,match", [
    (lambda: B.ReLU(max_value=-1.0), "max_value"),
    (lambda: B.ReLU(negative_slope=-0.1), "negative_slope"),
    (lambda: B.LeakyReLU(negative_slope=None), "negative_slope"),
    (lambda: B.PReLU(alpha_initializer="glorot_uniform"), "alpha_initializer"),
])
def test_bad_arguments_fail_as_in_keras(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_activation_layers_save_and_load(tmp_path):
    inp = B.Input((4, 3))
    h = B.PReLU(shared_axes=[1], alpha_initializer="ones")(inp)
    h = B.ReLU(max_value=2.0, negative_slope=0.1, threshold=0.2)(h)
    h = B.LeakyReLU(0.05)(B.ELU(0.5)(h))
    model = Model(inp, B.Softmax(axis=[1, 2])(h))
    path = str(tmp_path / "m")
    model.save(path)
    again = load_model(path, compile=False)
    np.testing.assert_allclose(again.predict(X3), model.predict(X3), atol=1e-7)
