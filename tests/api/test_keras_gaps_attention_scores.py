"""MultiHeadAttention(..., return_attention_scores=True), held against Keras 3 (torch
backend) with the same weights: called directly and in a functional graph (the scores as
a model output, and feeding further layers through fit), with masks and a causal mask."""
import keras
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain import optimizers as bo
from bigtrain.models import Model, load_model

TOL = 1e-5
RNG = np.random.default_rng(0)
Q = RNG.normal(size=(4, 5, 6)).astype("float32")
V = RNG.normal(size=(4, 3, 6)).astype("float32")
V5 = RNG.normal(size=(4, 5, 6)).astype("float32")


def _mhas(**args):
    keras.utils.set_random_seed(0)
    return keras.layers.MultiHeadAttention(2, 3, **args), B.MultiHeadAttention(2, 3, **args)


def _np(t):
    return np.asarray(t.detach().cpu()) if hasattr(t, "detach") else np.asarray(t)


@pytest.mark.parametrize("causal", [False, True])
def test_direct_call_returns_keras_output_and_scores(causal):
    k, b = _mhas(value_dim=4)
    mask = RNG.random((4, 5, 3)) > 0.3
    ko, ks = k(Q, V, attention_mask=mask, use_causal_mask=causal,
               return_attention_scores=True)
    q, v, m = torch.from_numpy(Q), torch.from_numpy(V), torch.from_numpy(mask)
    b(q, v, attention_mask=m, use_causal_mask=causal)  # build, then take Keras's weights
    b.set_weights(k.get_weights())
    bo_, bs = b(q, v, attention_mask=m, use_causal_mask=causal, return_attention_scores=True)
    assert bs.shape == (4, 2, 5, 3)
    assert np.abs(_np(ko) - _np(bo_)).max() <= TOL
    assert np.abs(_np(ks) - _np(bs)).max() <= TOL
    plain = b(q, v, attention_mask=m, use_causal_mask=causal)  # the fused path agrees
    assert np.abs(_np(plain) - _np(bo_)).max() <= TOL


def _graph(L, mha, model_cls, head=False):
    q, v = L.Input((5, 6)), L.Input((5 if head else 3, 6))
    out, scores = mha(q, v, return_attention_scores=True)
    if not head:
        return model_cls([q, v], [out, scores])
    feats = L.Concatenate()([L.Flatten()(out), L.Flatten()(scores)])
    return model_cls([q, v], L.Dense(2)(feats))


def test_scores_as_a_graph_output_match_keras(tmp_path):
    k, b = _mhas(dropout=0.5)  # dropout is off in inference: scores before it anyway
    km, bm = _graph(keras.layers, k, keras.Model), _graph(B, b, Model)
    # (Keras's symbolic shape of the scores says (None, 2, 5, 5); its real ones are these)
    assert [tuple(s) for s in bm.output_shapes] == [(5, 6), (2, 5, 3)]
    bm.set_weights(km.get_weights())
    kout, bout = km([Q, V]), bm([Q, V])
    for kt, bt in zip(kout, bout):
        assert np.abs(_np(kt) - _np(bt)).max() <= TOL
    bm.save(tmp_path / "m.bigtrain")  # the call option is kept with the graph
    again = load_model(tmp_path / "m.bigtrain").predict([Q, V])
    assert np.abs(again[1] - _np(bout[1])).max() <= TOL


def test_fit_through_the_scores_matches_keras():
    k, b = _mhas()
    km, bm = _graph(keras.layers, k, keras.Model, head=True), _graph(B, b, Model, head=True)
    bm.set_weights(km.get_weights())
    y = RNG.normal(size=(4, 2)).astype("float32")
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    bm.compile(optimizer=bo.SGD(0.1), loss="mse")
    fit = dict(batch_size=2, epochs=2, shuffle=False, verbose=0)
    hk = km.fit([Q, V5], y, **fit).history["loss"]
    hb = bm.fit([Q, V5], y, **fit).history["loss"]
    assert np.allclose(hk, hb, atol=TOL), (hk, hb)
    assert max(np.abs(a - c).max() for a, c in zip(km.get_weights(), bm.get_weights())) <= TOL
