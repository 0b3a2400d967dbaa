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
    with pytest.raises(ValueError, match=r"recurrent_dropout must be in \[0, 1\), got 1.5"):
        LSTM(4, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="recurrent_activation must be.*'hardsigmoid'"):
        GRU(4, recurrent_activation="hardsigmoid")


# ---- recurrent_dropout: Keras's step-by-step loop in training, the fused kernel otherwise --

TINY = 1e-9  # every mask is exactly 1.0 in float32: the dropout loop's math held to Keras's


@pytest.mark.parametrize("build", [
    lambda L: L.SimpleRNN(4, recurrent_dropout=TINY),
    lambda L: L.LSTM(4, recurrent_dropout=TINY, dropout=TINY, return_sequences=True),
    lambda L: L.GRU(4, recurrent_dropout=TINY, go_backwards=True),
    lambda L: L.Bidirectional(L.GRU(3, recurrent_dropout=TINY, return_sequences=True)),
], ids=["simple_rnn", "lstm", "gru_backwards", "bidirectional_gru"])
def test_recurrent_dropout_loop_matches_keras(build):
    keras_parity(build, (5, 3))


@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_recurrent_dropout_loop_with_mask_matches_keras(rnn):
    from tests.api.test_masking import ANY
    keras_parity(lambda L: [L.Embedding(5, 3, mask_zero=True),
                            getattr(L, rnn)(4, recurrent_dropout=TINY, return_sequences=True)],
                 (6,), input_dtype="int64", x=ANY.astype("int64"))


@pytest.mark.parametrize("rnn", ["SimpleRNN", "LSTM", "GRU"])
def test_recurrent_dropout_predict_matches_keras(rnn):
    keras_parity(lambda L: getattr(L, rnn)(4, dropout=0.3, recurrent_dropout=0.4), (5, 3),
                 steps=False)


def test_recurrent_dropout_leaves_the_fused_kernel_only_in_training(monkeypatch):
    import torch
    layer = LSTM(4, recurrent_dropout=0.5)
    model = Model(inp := Input(shape=(5, 3)), layer(inp))
    x = torch.randn(2, 5, 3)
    model.net.eval()
    model.net(x)  # inference: the fused kernel

    def refuse(*args):
        raise AssertionError("fused kernel")
    monkeypatch.setattr(LSTM, "_fused", refuse)
    model.net.train()
    first, second = model.net(x), model.net(x)  # training: the loop, a new mask each call
    assert first.shape == (2, 4) and not torch.equal(first, second)
    model.net.eval()
    with pytest.raises(AssertionError, match="fused"):
        model.net(x)


def test_recurrent_dropout_masks_one_per_sequence():
    """SimpleRNN(relu) with W = 0, U = I, b = 1: h_t = 1 + keep * h_{t-1}. A unit whose
    mask is 0 stays 1; one kept (keep = 1 / (1 - p) = 2) at every step reaches
    1 + 2 + ... + 2^(T-1); a mask drawn anew per step would give values in between."""
    import torch
    units, steps, p = 4000, 5, 0.5
    layer = SimpleRNN(units, activation="relu", recurrent_dropout=p)
    model = Model(inp := Input(shape=(steps, 1)), layer(inp))
    with torch.no_grad():
        layer.weight_ih.zero_()
        layer.weight_hh.copy_(torch.eye(units))
        layer.bias.fill_(1.0)
    model.net.train()
    h = model.net(torch.zeros(1, steps, 1))[0]
    dropped, kept = (h == 1.0), (h == 2.0 ** steps - 1)
    assert bool((dropped | kept).all())
    assert abs(float(dropped.float().mean()) - p) < 0.03  # 4000 draws: 3 sigma is 0.024


def test_recurrent_call_with_bad_rank_or_mask_names_layer_and_shapes():
    import torch
    layer = LSTM(3, name="r")
    layer(torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match=r"LSTM 'r' expects inputs of rank 3.*\(5, 4\)"):
        layer(torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"LSTM 'r'.*mask has shape \(2, 4\).*\(2, 5\)"):
        layer(torch.zeros(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))
