"""Keras's per-layer `trainable` held to Keras 3 (torch backend): a frozen layer keeps its
weights while the others train, `Dense(..., trainable=False)`, a frozen BatchNormalization
normalizes with its moving statistics, and the flag survives save/load and several ranks."""
import keras
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model, load_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 6)).astype("float32") * 2 + 1
Y = RNG.normal(size=(32, 3)).astype("float32")
FIT = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)


def _net(L, x, frozen_kwargs):
    h = L.Dense(5, name="first", **frozen_kwargs)(x)
    h = L.BatchNormalization(momentum=0.5, name="bn")(h)
    return L.Dense(3, name="last")(h)


def _pair(frozen_kwargs=None):
    keras.utils.set_random_seed(0)
    ki = keras.Input((6,))
    km = keras.Model(ki, _net(keras.layers, ki, frozen_kwargs or {}))
    bi = B.Input((6,))
    bm = Model(bi, _net(B, bi, frozen_kwargs or {}))
    bm.set_weights(km.get_weights())
    return km, bm


def _same(km, bm):
    for k, b in zip(km.get_weights(), bm.get_weights()):
        np.testing.assert_allclose(b, k, atol=1e-5)


@pytest.mark.parametrize("frozen", ["first", "bn"])
def test_a_frozen_layer_trains_as_in_keras(frozen):
    km, bm = _pair()
    for m in (km, bm):
        m.get_layer(frozen).trainable = False
        m.compile(optimizer="sgd", loss="mse")
        m.fit(X, Y, **FIT)
    _same(km, bm)
    before = _pair()[1].get_weights()
    moved = [float(np.abs(a - b).max()) for a, b in zip(before, bm.get_weights())]
    assert max(moved) > 1e-3  # the rest trained: the comparison could fail


def test_trainable_false_in_the_constructor_and_through_save(tmp_path):
    km, bm = _pair({"trainable": False})
    for m in (km, bm):
        m.compile(optimizer="sgd", loss="mse")
        m.fit(X, Y, **FIT)
    _same(km, bm)
    bm.save(str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.get_layer("first").trainable is False
    assert loaded.get_layer("last").trainable is True
    assert not any(p.requires_grad for p in loaded.get_layer("first").parameters())


def test_a_frozen_layer_stays_frozen_on_two_ranks():
    """(The BatchNormalization is frozen too: trained, it would normalize each rank's half
    of the batch, which differs from one process by design.)"""
    _, single = _pair()
    _, ranks = _pair()
    for m, kw in ((single, {}), (ranks, {"strategy": "ddp", "devices": 2, "timeout": 60})):
        m.get_layer("first").trainable = False
        m.get_layer("bn").trainable = False
        m.compile(optimizer="sgd", loss="mse")
        m.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0, **kw)
    for a, b in zip(single.get_weights(), ranks.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-5)
    first = _pair()[1].get_layer("first")
    np.testing.assert_array_equal(ranks.get_layer("first").linear.weight.detach().numpy(),
                                  first.linear.weight.detach().numpy())


def test_a_model_frozen_whole_warns_and_trains_nothing_as_keras():
    """torch refused an optimizer over no parameters; Keras warns and fits anyway."""
    km, bm = _pair()
    for m in (km, bm):
        m.trainable = False
        m.compile(optimizer="adam", loss="mse")
    kh = km.fit(X, Y, **FIT)
    with pytest.warns(UserWarning, match="does not have any trainable weights"):
        bh = bm.fit(X, Y, **FIT)
    np.testing.assert_allclose(bh.history["loss"], kh.history["loss"], rtol=1e-5)
    _same(km, bm)
