"""Attention layers held to Keras 3's numbers (predict and one SGD step, to 1e-5)."""
import numpy as np
import pytest
import torch

from bigtrain.layers import Attention, Input, MultiHeadAttention
from bigtrain.models import Model, load_model
from tests.api.harness import keras_parity


def self_attention(layer, **kwargs):
    return lambda x: layer(x, x, **kwargs)


def cross_attention(L, layer, with_key=False):
    """query x; value (and key) from a Conv1D on x: fewer steps, other features."""
    def apply(x):
        v = L.Conv1D(5, 2)(x)
        return layer(x, v, L.Conv1D(5, 2)(x)) if with_key else layer(x, v)
    return apply


@pytest.mark.parametrize("build", [
    lambda L: self_attention(L.MultiHeadAttention(2, 3)),
    lambda L: self_attention(L.MultiHeadAttention(2, 3, value_dim=2, output_shape=5),
                             use_causal_mask=True),
    lambda L: self_attention(L.MultiHeadAttention(3, 2, use_bias=False)),
    lambda L: cross_attention(L, L.MultiHeadAttention(2, 4)),
    lambda L: cross_attention(L, L.MultiHeadAttention(2, 4), with_key=True),
    lambda L: [L.Dense(4), lambda x: L.Attention()([x, x])],
    lambda L: [L.Dense(4), lambda x: L.Attention(use_scale=True)([x, x], use_causal_mask=True)],
    lambda L: [L.Dense(4), lambda x: L.Attention(score_mode="concat", use_scale=True)([x, x])],
    lambda L: [L.Dense(4), lambda x: L.AdditiveAttention()([x, L.Dense(4)(x)])],
])
def test_attention_layers_match_keras(build):
    keras_parity(build, (5, 4))


def test_attention_mask_matches_keras():
    import keras
    rng = np.random.default_rng(0)
    q, v = rng.normal(size=(2, 4, 6)).astype("float32"), rng.normal(size=(2, 3, 5)).astype("float32")
    mask = rng.random((2, 4, 3)) > 0.4
    mask[0, 1] = False  # a fully masked row: uniform weights, as Keras
    kmha = keras.layers.MultiHeadAttention(2, 3)
    want = keras.ops.convert_to_numpy(kmha(q, v, attention_mask=mask))
    mha = MultiHeadAttention(2, 3)
    qi, vi, mi = Input(shape=(4, 6)), Input(shape=(3, 5)), Input(shape=(4, 3), dtype="int64")
    model = Model([qi, vi, mi], mha(qi, vi, attention_mask=mi))
    model.set_weights(kmha.get_weights())
    got = model.predict([q, v, mask.astype("int64")])
    np.testing.assert_allclose(got, want, atol=1e-5)
    unmasked = model.predict([q, v, np.ones_like(mask, "int64")])
    assert np.abs(unmasked - got).max() > 1e-2  # the mask matters


def test_attention_model_saves_and_loads(tmp_path):
    x = Input(shape=(5, 4))
    y = MultiHeadAttention(2, 3)(x, x, use_causal_mask=True)
    model = Model(x, Attention()([y, x]))
    data = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    model.save(str(tmp_path / "att.bigtrain"))
    np.testing.assert_array_equal(load_model(str(tmp_path / "att.bigtrain")).predict(data),
                                  model.predict(data))


def test_bad_attention_input_says_what_and_how():
    with pytest.raises(ValueError, match="'mha' needs key_dim"):
        MultiHeadAttention(num_heads=2, name="mha")
    q, v = Input(shape=(4, 6)), Input(shape=(3, 5))
    with pytest.raises(ValueError, match=r"'m2'.*attention_mask must have shape \(None, 4, 3\)"
                                         r".*got \(None, 3, 4\)"):
        MultiHeadAttention(2, 3, name="m2")(q, v, attention_mask=Input(shape=(3, 4)))
    with pytest.raises(ValueError, match=r"'m3' expects a query of shape.*\(None, 6\)"):
        MultiHeadAttention(2, 3, name="m3")(Input(shape=(6,)), v)
    assert torch.is_tensor(MultiHeadAttention(1, 2)(torch.ones(1, 2, 3), torch.ones(1, 2, 3)))
    mha = MultiHeadAttention(2, 3, name="m4")
    q, v = torch.ones(2, 4, 6), torch.ones(2, 3, 5)
    mha(q, v, attention_mask=torch.ones(2, 4, 3))
    with pytest.raises(ValueError, match=r"'m4': attention_mask must have shape.*\(2, 4, 3\), "
                                         r"got \(2, 4\)"):
        mha(q, v, attention_mask=torch.ones(2, 4))  # a padding mask where Keras wants (B, Tq, Tk)


def test_initial_kernels_have_keras_scale():
    """Keras 3 takes an EinsumDense kernel's glorot fans from its input and output axes:
    the query kernel (32, 4, 16) draws within 0.25, where bigtrain drew within 0.097."""
    import keras

    import bigtrain.layers as B
    from bigtrain.models import Model
    ki = keras.Input((6, 32))
    kmodel = keras.Model(ki, keras.layers.MultiHeadAttention(4, 16)(ki, ki))
    bi = B.Input((6, 32))
    model = Model(bi, B.MultiHeadAttention(4, 16)(bi, bi))
    for k, b in zip(kmodel.get_weights(), model.get_weights()):
        assert k.shape == b.shape
        if k.ndim == 3:  # kernels: the largest draw is the uniform's limit, to 3 %
            assert abs(np.abs(b).max() / np.abs(k).max() - 1) < 0.03, k.shape
