"""summary() lists each layer once, as Keras 3's does: a shared layer in one row with its
weights counted once, a model called as a layer in one row, in Keras's layer order."""
import numpy as np

import bigtrain
import bigtrain.layers as B
from bigtrain.api.summary import _rows
from bigtrain.models import Model


def _keras_rows(km):
    return [(layer.name, "(None, " + ", ".join(map(str, layer.output.shape[1:])) + ")",
             layer.count_params()) for layer in km.layers]


def _rows_of(model):
    return [(name.split(" (")[0], shape, count) for name, shape, count in _rows(model)]


def _both(build):
    import keras
    keras.utils.set_random_seed(0)
    bigtrain.clear_session()
    return build(keras.layers, keras.Model), build(B, Model)


def test_a_shared_layer_is_one_row_as_keras():
    def build(L, M):
        i = L.Input((4, 6), name="x")
        mha = L.MultiHeadAttention(2, 2, name="mha")
        return M(i, mha(mha(i, i), i))
    km, model = _both(build)
    assert _rows_of(model) == _keras_rows(km) == [("x", "(None, 4, 6)", 0),
                                                  ("mha", "(None, 4, 6)", 114)]
    text = model.summary(print_fn=lambda s: None)
    assert text.count("mha (MultiHeadAttention)") == 1 and "Total params: 114" in text


def test_shared_layers_and_called_models_row_as_keras():
    def build(L, M):
        i = L.Input((4,), name="bi")
        base = M(i, L.Dense(3, name="b2")(L.Dense(3, name="b1")(i)), name="base")
        a, b = L.Input((4,), name="a"), L.Input((4,), name="b")
        s = L.Dense(4, name="s")
        joined = L.Concatenate(name="c")([s(a), base(s(b)), base(a)])
        return M([a, b], L.Dense(1, name="o")(joined))
    km, model = _both(build)
    assert _rows_of(model) == _keras_rows(km)
    assert model.count_params() == km.count_params()
    text = model.summary(print_fn=lambda s: None)
    assert text.count("base (Functional)") == 1 and text.count("s (Dense)") == 1
    assert np.sum([count for _, _, count in _rows(model)]) == km.count_params()
