"""Keras options bigtrain used to refuse, held to Keras 3 (torch backend):
Bidirectional(merge_mode=None), MultiHeadAttention(attention_axes=(1,)),
BatchNormalization(axis=1) and LayerNormalization over several last axes."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model, load_model
from tests.api.harness import keras_parity
from tests.api.test_layerset_merge import graph_parity


@pytest.mark.parametrize("options", [{}, {"return_sequences": True},
                                     {"return_state": True},
                                     {"return_sequences": True, "return_state": True}], ids=str)
@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_bidirectional_without_merge_lists_both_outputs_as_keras(rnn, options, tmp_path):
    def build(L, inputs):
        outs = L.Bidirectional(getattr(L, rnn)(3, **options), merge_mode=None)(inputs[0])
        return [L.Dense(2)(t) for t in outs[:2]] + list(outs[2:])
    train = not options.get("return_state")  # Keras fits no loss on a state output
    _, model, x = graph_parity(build, [(5, 2)], train=train)
    path = str(tmp_path / "bidir.bigtrain")
    model.save(path)
    for got, want in zip(load_model(path).predict(x), model.predict(x)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bidirectional_without_merge_refuses_a_mask_on_two_sequences():
    ids = B.Input(shape=(5,), dtype="int64")
    h = B.Embedding(5, 3, mask_zero=True)(ids)
    with pytest.raises(ValueError, match="mask"):
        B.Bidirectional(B.LSTM(3, return_sequences=True), merge_mode=None)(h)
    fwd, bwd = B.Bidirectional(B.LSTM(3), merge_mode=None)(h)  # last steps: no mask out
    assert fwd.shape == bwd.shape == (3,)


@pytest.mark.parametrize("axes", [(1,), [-2], 1])
def test_attention_axes_naming_the_steps_match_keras(axes):
    def build(L, inputs):
        q, v = inputs
        return L.MultiHeadAttention(2, 3, attention_axes=axes)(q, v)
    graph_parity(build, [(4, 5), (6, 5)])
    config = B.MultiHeadAttention(2, 3, attention_axes=axes).get_config()
    assert B.MultiHeadAttention(**{**config, "name": "again"}).attention_axes == config[
        "attention_axes"]


@pytest.mark.parametrize("axes", [(2,), (1, 2), -1])
def test_other_attention_axes_are_refused(axes):
    with pytest.raises(ValueError, match=r"attention_axes=.* is not supported"):
        B.MultiHeadAttention(2, 3, attention_axes=axes)


@pytest.mark.parametrize("axis,shape", [(1, (3, 4)), (1, (3, 2, 2)), (-2, (3, 4)),
                                        (2, (2, 3, 2))])
def test_batchnorm_on_another_axis_matches_keras(axis, shape):
    keras_parity(lambda L: [L.Dense(shape[-1]), L.BatchNormalization(axis=axis, momentum=0.5),
                            L.Dense(2)], shape)


def test_batchnorm_on_another_axis_moves_keras_statistics():
    import keras
    x = np.random.default_rng(3).normal(2.0, 3.0, size=(8, 3, 4)).astype("float32")
    kl = keras.layers.BatchNormalization(axis=1, momentum=0.5)
    kl(x, training=True)
    layer = B.BatchNormalization(axis=1, momentum=0.5)
    model = Model(inp := B.Input(shape=(3, 4)), layer(inp))
    model.compile("sgd", "mse")
    model.train_on_batch(x, x)
    for ours, theirs in zip(model.get_weights()[2:], kl.get_weights()[2:]):  # moving stats
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert not np.allclose(kl.get_weights()[2], 0.0)  # the statistics moved


@pytest.mark.parametrize("axis,shape", [([-2, -1], (3, 4)), ([1, 2], (3, 4)),
                                        ((2, 3), (2, 3, 4)), ([1, 2, 3], (2, 3, 4)),
                                        ([3, -2], (2, 3, 4))])
def test_layernorm_over_last_axes_matches_keras(axis, shape, tmp_path):
    keras_parity(lambda L: [L.Dense(shape[-1]), L.LayerNormalization(axis=axis),
                            L.Dense(2)], shape)
    model = Model(inp := B.Input(shape=shape), B.LayerNormalization(axis=axis)(inp))
    path = str(tmp_path / "ln.bigtrain")
    model.save(path)
    x = np.random.default_rng(4).normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(load_model(path).predict(x), model.predict(x), rtol=1e-6)


@pytest.mark.parametrize("axis", [1, [1, 3], [-1, 2]])
def test_layernorm_over_other_axes_is_refused(axis):
    with pytest.raises(ValueError, match=r"is not supported.*last axes"):
        Model(inp := B.Input(shape=(2, 3, 4)), B.LayerNormalization(axis=axis)(inp))
