"""Attention and AdditiveAttention with return_attention_scores=True, held against Keras 3
(torch backend) with the same weights: the outputs and the (B, Tq, Tv) scores, with a
value mask and a causal mask, in a graph and called directly, and through save/load."""
import keras
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain.models import Model, load_model

RNG = np.random.default_rng(0)
Q = RNG.normal(size=(3, 4, 6)).astype("float32")
V = RNG.normal(size=(3, 5, 6)).astype("float32")
V[1, 3:] = 0.0  # Masking hides the last value steps of row 1


def _build(L, kind, causal):
    q, v = L.Input((4, 6)), L.Input((5, 6))
    layer = getattr(L, kind)()
    out, scores = layer([q, L.Masking()(v)], return_attention_scores=True,
                        use_causal_mask=causal)
    return (keras.Model if L is keras.layers else Model)([q, v], [out, scores]), layer


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["Attention", "AdditiveAttention"])
def test_scores_match_keras(kind, causal, tmp_path):
    keras.utils.set_random_seed(0)
    km, _ = _build(keras.layers, kind, causal)
    bm, blayer = _build(B, kind, causal)
    bm.set_weights(km.get_weights())
    k, b = km.predict([Q, V], verbose=0), bm.predict([Q, V])
    assert [a.shape for a in b] == [a.shape for a in k] == [(3, 4, 6), (3, 4, 5)]
    for a, c in zip(k, b):
        np.testing.assert_allclose(c, a, atol=1e-6)
    bm.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras").predict([Q, V])
    for a, c in zip(b, again):
        np.testing.assert_array_equal(c, a)
    out, scores = blayer([torch.tensor(Q), torch.tensor(V)], return_attention_scores=True)
    klayer = getattr(keras.layers, kind)()
    kout, kscores = klayer([Q, V], return_attention_scores=True)
    if blayer.keras_weights():
        klayer.set_weights(blayer.get_weights())
        kout, kscores = klayer([Q, V], return_attention_scores=True)
    np.testing.assert_allclose(scores.detach().numpy(), kscores.detach().cpu().numpy(), atol=1e-6)
    np.testing.assert_allclose(out.detach().numpy(), kout.detach().cpu().numpy(), atol=1e-6)
