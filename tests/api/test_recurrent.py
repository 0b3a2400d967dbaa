"""Recurrent layers held to Keras 3's numbers (predict and one SGD step, to 1e-5)."""
import numpy as np
import pytest

from bigtrain.layers import GRU, LSTM, Dense, Input, SimpleRNN, TimeDistributed
from bigtrain.models import Model, load_model
from tests.api.harness import keras_parity


@pytest.mark.parametrize("build,shape,dtype", [
    (lambda L: L.SimpleRNN(3), (5, 2), "float32"),
    (lambda L: L.SimpleRNN(3, activation="relu", return_sequences=True), (5, 2), "float32"),
    (lambda L: L.LSTM(4), (6, 3), "float32"),
    (lambda L: L.LSTM(4, return_sequences=True, go_backwards=True), (6, 3), "float32"),
    (lambda L: L.LSTM(3, use_bias=False, unit_forget_bias=False), (4, 2), "float32"),
    (lambda L: L.GRU(4), (6, 3), "float32"),
    (lambda L: L.GRU(3, return_sequences=True, go_backwards=True), (5, 2), "float32"),
    (lambda L: L.Bidirectional(L.LSTM(3)), (5, 2), "float32"),
    (lambda L: L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="sum"), (5, 2),
     "float32"),
    (lambda L: L.TimeDistributed(L.Dense(3, activation="relu")), (4, 5), "float32"),
    (lambda L: [L.Embedding(9, 4), L.LSTM(5, return_sequences=True), L.GRU(3), L.Dense(2)],
     (6,), "int64"),
    (lambda L: [L.Conv1D(4, 2), L.Bidirectional(L.SimpleRNN(2, return_sequences=True)),
                L.TimeDistributed(L.Dense(2))], (5, 3), "float32"),
])
def test_recurrent_layers_match_keras(build, shape, dtype):
    keras_parity(build, shape, input_dtype=dtype)


def test_keras_weight_layouts():
    inp = Input(shape=(7, 5))
    model = Model(inp, GRU(4)(LSTM(6, return_sequences=True)(inp)))
    assert [w.shape for w in model.get_weights()] == [
        (5, 24), (6, 24), (24,),   # LSTM kernel, recurrent kernel, bias (gates i, f, c, o)
        (6, 12), (4, 12), (2, 12)]  # GRU kernel, recurrent kernel, bias (input; recurrent)
    lstm_bias = model.get_weights()[2]
    np.testing.assert_array_equal(lstm_bias, [0] * 6 + [1] * 6 + [0] * 12)  # unit_forget_bias


def test_recurrent_model_saves_and_loads(tmp_path):
    from bigtrain.layers import Bidirectional
    inp = Input(shape=(5, 3))
    h = Bidirectional(LSTM(4, return_sequences=True))(inp)
    out = TimeDistributed(Dense(2))(SimpleRNN(3, return_sequences=True)(h))
    model = Model(inp, out)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    model.save(str(tmp_path / "rnn.bigtrain"))
    np.testing.assert_array_equal(load_model(str(tmp_path / "rnn.bigtrain")).predict(x),
                                  model.predict(x))


@pytest.mark.parametrize("factory,shape,match", [
    (lambda: LSTM(4, name="r"), (8,), r"LSTM 'r'.*rank 3.*\(None, 8\)"),
    (lambda: GRU(4, name="r"), (2, 3, 4), r"GRU 'r'.*rank 3.*\(None, 2, 3, 4\)"),
])
def test_recurrent_bad_rank_names_layer_and_shape(factory, shape, match):
    with pytest.raises(ValueError, match=match):
        factory()(Input(shape=shape))


def test_unsupported_variants_say_so():
    with pytest.raises(ValueError, match="recurrent_dropout is not supported"):
        LSTM(4, recurrent_dropout=0.1)
    with pytest.raises(ValueError, match="reset_after=True"):
        GRU(4, reset_after=False)
