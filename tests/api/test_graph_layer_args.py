"""Keras's layer-level API around the graph, held to Keras 3 on torch: constructor keywords
(harmless ones accepted, the rest refused naming the layer class and the keyword), and
`layer.get_weights()` / `layer.set_weights()` in Keras's per-layer order and shapes."""
import numpy as np
import pytest

import bigtrain
import bigtrain.layers as B
from bigtrain.models import Model

RNG = np.random.default_rng(0)
IMG = RNG.normal(size=(3, 6, 6, 2)).astype("float32")
SEQ = RNG.normal(size=(3, 5, 4)).astype("float32")
IDS = RNG.integers(0, 7, (3, 5))
NAMES = ["conv", "bn", "dense", "lstm", "emb", "mha"]


def _build(L, M):
    img, seq = L.Input((6, 6, 2), name="img"), L.Input((5, 4), name="seq")
    ids = L.Input((5,), dtype="int64", name="ids")
    a = L.Flatten()(L.BatchNormalization(name="bn")(L.Conv2D(3, 3, name="conv")(img)))
    b = L.LSTM(3, name="lstm")(seq)
    e = L.Embedding(7, 4, name="emb")(ids)
    c = L.Flatten()(L.MultiHeadAttention(2, 3, name="mha")(e, seq))
    return M([img, seq, ids], L.Dense(2, name="dense")(L.Concatenate()([a, b, c])))


def _pair():
    import keras
    keras.utils.set_random_seed(0)
    bigtrain.clear_session()
    return _build(keras.layers, keras.Model), _build(B, Model)


def test_layer_get_weights_is_keras_per_layer():
    km, model = _pair()
    model.set_weights(km.get_weights())
    for name in NAMES:
        ours, theirs = model.get_layer(name).get_weights(), km.get_layer(name).get_weights()
        assert [w.shape for w in ours] == [w.shape for w in theirs], name
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


def test_layer_set_weights_takes_keras_per_layer_weights():
    km, model = _pair()
    for name in NAMES:  # the BatchNormalization's moving statistics too
        model.get_layer(name).set_weights(km.get_layer(name).get_weights())
    x = [IMG, SEQ, IDS]
    np.testing.assert_allclose(model.predict(x), km.predict(x, verbose=0), atol=1e-5)
    dense = model.get_layer("dense")
    with pytest.raises(ValueError, match="'dense'.*expects shape"):
        dense.set_weights([np.zeros((2, 2)), np.zeros(2)])
    with pytest.raises(ValueError, match="has 2 weights"):
        dense.set_weights([np.zeros(2)])


@pytest.mark.parametrize("make", [
    lambda L: L.Dense(4, dtype="float32"),
    lambda L: L.Dense(4, autocast=False),
    lambda L: L.Conv1D(4, 2, dtype="float32"),
], ids=["dense_dtype", "dense_autocast", "conv_dtype"])
def test_float32_dtype_and_autocast_are_accepted_and_change_nothing(make):
    import keras
    keras.utils.set_random_seed(0)
    ki, bi = keras.Input((5, 4)), B.Input((5, 4))
    km, model = keras.Model(ki, make(keras.layers)(ki)), Model(bi, make(B)(bi))
    model.set_weights(km.get_weights())
    np.testing.assert_allclose(model.predict(SEQ), km.predict(SEQ, verbose=0), atol=1e-5)


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "float64", "bfloat16"])
def test_dtypes_that_change_the_numbers_are_refused(dtype):
    with pytest.raises(ValueError, match=rf"Dense\(dtype='{dtype}'\).*float32.*precision="):
        B.Dense(4, dtype=dtype)


def test_unknown_constructor_keywords_name_the_layer_and_what_it_takes():
    with pytest.raises(TypeError, match=r"LSTM\(stateful=\.\.\.\) is not supported: "
                                        r"bigtrain's LSTM takes units, "):
        B.LSTM(4, stateful=True)
    with pytest.raises(TypeError, match=r"Flatten\(bogus=.*takes .*name"):
        B.Flatten(bogus=1)


def test_harmless_keywords_a_layer_declares_are_accepted():
    class Steps(B.Dense):
        harmless_keywords = ("unroll",)  # e.g. Keras's RNN unroll: the math is the same

    assert Steps(3, unroll=True).units == 3
    with pytest.raises(TypeError, match="Steps"):
        Steps(3, stateful=True)
