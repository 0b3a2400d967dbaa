"""Time-step masks (Embedding(mask_zero=True), Masking) through merges,
GlobalAveragePooling1D, TimeDistributed and the attention layers, held to Keras 3's numbers:
predict and one SGD step, to 1e-5."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model
from bigtrain.optimizers import SGD

# two inputs of token ids, 0 = padding (masked); a row with a masked step in every place
IDS = np.array([[3, 1, 2, 0, 0], [1, 0, 0, 0, 0], [4, 4, 4, 4, 1], [2, 3, 0, 0, 0]])
IDS2 = np.array([[0, 1, 2, 3, 0], [1, 1, 0, 0, 0], [4, 0, 4, 4, 0], [2, 2, 2, 0, 0]])


def _agree(build, tol=1e-5):
    """`build(L, a, b)` in Keras and bigtrain on the same weights: predict agrees, and after
    one full-batch SGD step on the MSE loss (masked where Keras masks it) the weights do."""
    import keras
    keras.utils.set_random_seed(0)
    ka, kb = keras.Input((5,), dtype="int64"), keras.Input((5,), dtype="int64")
    kmodel = keras.Model([ka, kb], build(keras.layers, ka, kb))
    ba, bb = B.Input((5,), dtype="int64"), B.Input((5,), dtype="int64")
    model = Model([ba, bb], build(B, ba, bb))
    model.set_weights(kmodel.get_weights())
    xs = [IDS, IDS2]
    want = kmodel.predict(xs, verbose=0)
    assert np.abs(model.predict(xs) - want).max() <= tol
    y = np.random.default_rng(1).normal(size=want.shape).astype("float32")
    kmodel.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    kmodel.fit(xs, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    before = model.get_weights()
    model.compile(optimizer=SGD(learning_rate=0.5), loss="mse")
    model.fit(xs, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), before)) > 1e-3
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        assert np.abs(a - b).max() <= tol


def _emb(L, masked=True):
    return L.Embedding(5, 4, mask_zero=masked)


@pytest.mark.parametrize("build", [
    # GlobalAveragePooling1D averages the unmasked steps only
    lambda L, a, b: L.Dense(2)(L.GlobalAveragePooling1D()(L.Dense(3)(_emb(L)(a)))),
    lambda L, a, b: L.GlobalAveragePooling1D(keepdims=True)(_emb(L)(a)),
    # element-wise merges: masked where every input is masked, with the OR of the masks
    lambda L, a, b: L.LSTM(3)(L.Add()([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.GlobalAveragePooling1D()(L.Subtract()([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.GRU(3)(L.Average()([_emb(L)(a), _emb(L, False)(b)])),  # unmasked out
    # Concatenate: masks end to end along time, OR-ed along features, all True if unmasked
    lambda L, a, b: L.LSTM(3)(L.Concatenate(axis=1)([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.LSTM(3)(L.Concatenate(axis=1)([_emb(L)(a), _emb(L, False)(b)])),
    lambda L, a, b: L.SimpleRNN(3)(L.Concatenate()([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.LSTM(3)(L.Concatenate()([_emb(L)(a), _emb(L, False)(b)])),
    # Multiply, Maximum and Minimum skip the masked steps in their values, as Keras's
    lambda L, a, b: L.LSTM(3)(L.Multiply()([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.Dense(2)(L.Multiply()([_emb(L)(a), _emb(L, False)(b)])),
    lambda L, a, b: L.LSTM(3)(L.Maximum()([_emb(L)(a), _emb(L)(b), _emb(L)(a)])),
    lambda L, a, b: L.Dense(2)(L.Maximum()([_emb(L, False)(a), _emb(L)(b)])),
    lambda L, a, b: L.GRU(3)(L.Minimum()([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.Dense(2)(L.Minimum()([_emb(L)(a), _emb(L, False)(b)])),
    # TimeDistributed passes the mask on
    lambda L, a, b: L.LSTM(3)(L.TimeDistributed(L.Dense(3))(_emb(L)(a))),
    lambda L, a, b: L.TimeDistributed(L.Dense(2))(_emb(L)(a)),
    # MultiHeadAttention: query and value masks join the attention mask; the output keeps
    # the query's
    lambda L, a, b: L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 3)(_emb(L)(a),
                                                                           _emb(L)(b))),
    lambda L, a, b: L.Dense(2)(L.MultiHeadAttention(2, 3)(_emb(L, False)(a), _emb(L)(b))),
    lambda L, a, b: L.Dense(2)(L.MultiHeadAttention(2, 3)(_emb(L)(a), _emb(L, False)(b))),
    lambda L, a, b: (lambda e: L.Dense(2)(L.MultiHeadAttention(2, 3)(
        e, e, use_causal_mask=True)))(_emb(L)(a)),
    lambda L, a, b: (lambda q, v: L.Dense(2)(L.MultiHeadAttention(2, 3)(q, v, v)))(
        _emb(L)(a), _emb(L)(b)),
    # Attention and AdditiveAttention: the value's mask hides steps, the query's zeroes rows
    lambda L, a, b: L.GlobalAveragePooling1D()(L.Attention()([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.Dense(2)(L.Attention(use_scale=True)([_emb(L, False)(a), _emb(L)(b)])),
    lambda L, a, b: L.Dense(2)(L.Attention(score_mode="concat")(
        [_emb(L)(a), _emb(L, False)(b)])),
    lambda L, a, b: (lambda e: L.Dense(2)(L.Attention()([e, e], use_causal_mask=True)))(
        _emb(L)(a)),
    lambda L, a, b: L.LSTM(2)(L.AdditiveAttention()([_emb(L)(a), _emb(L)(b), _emb(L)(a)])),
    # a masked sequence output: the loss leaves the masked steps out
    lambda L, a, b: L.Dense(2)(L.Concatenate()([_emb(L)(a), _emb(L)(b)])),
    lambda L, a, b: L.Dense(2)(L.Add()([_emb(L)(a), L.Masking()(_emb(L, False)(b))])),
])
def test_masks_through_merges_and_pooling_match_keras(build):
    _agree(build)


def test_a_layer_that_would_have_to_apply_a_mask_refuses_it():
    a = B.Input((5,), dtype="int64")
    with pytest.raises(ValueError, match=r"layer 'sm' \(Softmax\) gets a time-step mask"):
        B.Softmax(name="sm")(B.Embedding(5, 4, mask_zero=True)(a))
