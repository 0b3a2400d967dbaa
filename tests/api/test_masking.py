"""Time-step masks (Embedding(mask_zero=True), Masking) and return_state, held to Keras 3."""
import numpy as np
import pytest

import bigtrain.api.layers.rnn_mask as rnn_mask
from bigtrain.layers import LSTM, Dense, Embedding, Input, Masking, Softmax
from bigtrain.models import Model, load_model
from tests.api.harness import keras_parity

# (B=4, T=6) ids, 0 = padding. RIGHT: real steps then padding (the packed-sequence path);
# ANY: padding anywhere, a row of padding only (the step-by-step path).
RIGHT = np.array([[3, 1, 2, 4, 0, 0], [1, 2, 0, 0, 0, 0], [4, 4, 4, 4, 4, 1], [2, 0, 0, 0, 0, 0]])
LEFT = RIGHT[:, ::-1].copy()  # pad_sequences' default: padding first (also packed)
ANY = np.array([[0, 3, 0, 2, 4, 0], [1, 0, 0, 2, 0, 0], [0, 0, 0, 0, 0, 0], [2, 3, 1, 0, 0, 4]])
RNNS = ["LSTM", "GRU", "SimpleRNN"]
OPTIONS = [{}, {"return_sequences": True}, {"go_backwards": True},
           {"go_backwards": True, "return_sequences": True}]


def _masked(rnn, options, bidirectional=False):
    def build(L):
        layer = getattr(L, rnn)(4, **options)
        tail = [L.Flatten()] if options.get("return_sequences") else []  # drops the mask
        return [L.Embedding(5, 3, mask_zero=True),
                L.Bidirectional(layer) if bidirectional else layer, *tail]
    return build


@pytest.mark.parametrize("ids", [RIGHT, LEFT, ANY], ids=["right_padded", "left_padded",
                                                         "any_mask"])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("rnn", RNNS)
def test_mask_zero_matches_keras(rnn, options, ids):
    keras_parity(_masked(rnn, options), (6,), input_dtype="int64", x=ids.astype("int64"))


@pytest.mark.parametrize("ids", [RIGHT, LEFT, ANY], ids=["right_padded", "left_padded",
                                                         "any_mask"])
@pytest.mark.parametrize("sequences", [False, True])
@pytest.mark.parametrize("rnn", RNNS)
def test_bidirectional_mask_matches_keras(rnn, sequences, ids):
    # Keras zeroes masked steps of both directions when Bidirectional returns sequences
    keras_parity(_masked(rnn, {"return_sequences": sequences}, bidirectional=True), (6,),
                 input_dtype="int64", x=ids.astype("int64"))


def test_masking_layer_through_dense_matches_keras():
    x = np.random.default_rng(1).normal(size=(4, 5, 3)).astype("float32")
    x[0, 3:] = 0.0   # right padding
    x[1, 1] = 0.0    # a hole
    x[2, :, 0] = 0.0  # one zero feature is not padding
    keras_parity(lambda L: [L.Masking(0.0), L.Dense(3), L.Activation("tanh"), L.GRU(2)], (5, 3),
                 x=x)


def test_mask_changes_the_result():
    """Guard: the mask matters on these inputs, so the parity tests could fail."""
    ids = RIGHT.astype("int64")
    outs = []
    for mask_zero in (True, False):
        inp = Input(shape=(6,), dtype="int64")
        model = Model(inp, LSTM(4)(Embedding(5, 3, mask_zero=mask_zero, name="e")(inp)))
        if outs:
            model.set_weights(weights)
        weights = model.get_weights()
        outs.append(model.predict(ids))
    assert np.abs(outs[0] - outs[1]).max() > 1e-2


@pytest.mark.parametrize("backwards", [False, True])
def test_padding_at_either_end_runs_packed(monkeypatch, backwards):
    def refuse(*args):
        raise AssertionError("padding at an end should run on packed sequences")
    monkeypatch.setattr(rnn_mask, "run_stepwise", refuse)
    inp = Input(shape=(6,), dtype="int64")
    model = Model(inp, LSTM(4, go_backwards=backwards)(Embedding(5, 3, mask_zero=True)(inp)))
    model.predict(RIGHT.astype("int64"))
    model.predict(LEFT.astype("int64"))
    with pytest.raises(AssertionError, match="packed"):
        model.predict(ANY.astype("int64"))


@pytest.mark.parametrize("rnn,states", [("LSTM", 2), ("GRU", 1), ("SimpleRNN", 1)])
def test_return_state_matches_keras(rnn, states, tmp_path):
    import keras
    import bigtrain.layers as B
    keras.utils.set_random_seed(0)
    outs = {}
    for name, L, I, M in (("keras", keras.layers, keras.Input, keras.Model),
                          ("bigtrain", B, B.Input, Model)):
        inp = I(shape=(6,), dtype="int64")
        res = getattr(L, rnn)(4, return_sequences=True, return_state=True)(
            L.Embedding(5, 3, mask_zero=True)(inp))
        assert len(res) == 1 + states
        outs[name] = M(inp, list(res))
    outs["bigtrain"].set_weights(outs["keras"].get_weights())
    ids = ANY.astype("int64")
    want = outs["keras"].predict(ids, verbose=0)
    got = outs["bigtrain"].predict(ids)
    assert len(got) == len(want) == 1 + states
    for a, b in zip(got, want):
        assert np.abs(np.asarray(a) - b).max() <= 1e-5
    path = tmp_path / "m.keras"
    outs["bigtrain"].save(path)
    for a, b in zip(load_model(path).predict(ids), got):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() == 0.0


def test_mask_where_keras_would_use_it_is_refused():
    inp = Input(shape=(6,), dtype="int64")
    emb = Embedding(5, 3, mask_zero=True)(inp)
    with pytest.raises(ValueError, match="Softmax.*time-step mask"):
        Softmax()(emb)  # Keras's softmax leaves the masked steps out


def test_mask_of_wrong_shape_is_refused():
    import torch
    x = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\).*\(2, 5\)"):
        rnn_mask.run_masked(None, x, torch.ones(2, 4, dtype=torch.bool), (), False, False)


def test_mask_survives_a_wrapper_that_replaces_outputs():
    # FSDP's hooks hand on new output tensors, without the mask attribute on them
    ids = RIGHT.astype("int64")
    inp = Input(shape=(6,), dtype="int64")
    embed = Embedding(5, 3, mask_zero=True)
    model = Model(inp, LSTM(4)(embed(inp)))
    want = model.predict(ids)
    embed.register_forward_hook(lambda mod, args, out: out.clone())
    assert np.abs(model.predict(ids) - want).max() == 0.0


# ---- masked outputs: Keras leaves masked steps out of the loss and the metrics ----------

def _two_models(build):
    import keras
    import bigtrain.layers as B
    keras.utils.set_random_seed(0)
    pair = []
    for L, inp in ((keras.layers, keras.Input((6,), dtype="int64")),
                   (B, B.Input((6,), dtype="int64"))):
        out = inp
        for layer in build(L):
            out = layer(out)
        pair.append((keras.Model if L is keras.layers else Model)(inp, out))
    pair[1].set_weights(pair[0].get_weights())
    return pair


def _sequence_classifier(L, rnn="GRU", bidirectional=False):
    layer = getattr(L, rnn)(4, return_sequences=True)
    return [L.Embedding(5, 3, mask_zero=True), L.Bidirectional(layer) if bidirectional
            else layer, L.Dense(3, activation="softmax")]


@pytest.mark.parametrize("ids", [RIGHT, ANY], ids=["right_padded", "any_mask"])
@pytest.mark.parametrize("rnn,bidirectional", [("GRU", False), ("LSTM", True)])
def test_masked_loss_and_metrics_match_keras(rnn, bidirectional, ids):
    """Loss, accuracy (train and evaluate) and weights after one SGD step equal Keras's."""
    import keras
    from bigtrain.optimizers import SGD
    kmodel, model = _two_models(lambda L: _sequence_classifier(L, rnn, bidirectional))
    y = np.random.default_rng(0).integers(0, 3, (4, 6))
    ids = ids.astype("int64")
    kmodel.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy",
                   metrics=["accuracy"])
    model.compile(optimizer=SGD(0.5), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    want = kmodel.fit(ids, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history
    got = model.fit(ids, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history
    for key in ("loss", "accuracy"):
        assert abs(got[key][0] - want[key][0]) <= 1e-5, (key, got, want)
    worst = max(np.abs(a - b).max() for a, b in zip(model.get_weights(), kmodel.get_weights()))
    assert worst <= 1e-5
    k_loss, k_acc = kmodel.evaluate(ids, y, verbose=0)
    loss, acc = model.evaluate(ids, y)
    assert abs(loss - k_loss) <= 1e-5 and abs(acc - k_acc) <= 1e-5


@pytest.mark.parametrize("rnn", RNNS)
def test_masked_sequence_output_mse_step_matches_keras(rnn):
    keras_parity(lambda L: [L.Embedding(5, 3, mask_zero=True),
                            getattr(L, rnn)(4, return_sequences=True), L.Dense(2)],
                 (6,), input_dtype="int64", x=ANY.astype("int64"))


def test_masked_loss_differs_from_unmasked():
    """Guard: on these ids the masked steps change the loss, so the checks above could fail."""
    losses = []
    for masked in (True, False):
        inp = Input(shape=(6,), dtype="int64")
        out = Dense(1)(LSTM(4, return_sequences=True)(
            Embedding(5, 3, mask_zero=masked, name="e")(inp)))
        model = Model(inp, out)
        if losses:
            model.set_weights(weights)
        weights = model.get_weights()
        model.compile(optimizer="sgd", loss="mse")
        y = np.where(RIGHT == 0, 10.0, 0.0).astype("float32")[..., None]  # big on padding
        losses.append(model.evaluate(RIGHT.astype("int64"), y))
    assert losses[0] < 1.0 < losses[1]


def test_masked_loss_on_several_processes_is_refused():
    inp = Input(shape=(6,), dtype="int64")
    model = Model(inp, Dense(1)(LSTM(3, return_sequences=True)(
        Embedding(5, 3, mask_zero=True)(inp))))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="time-step mask.*one process only, not on 2"):
        model.fit(RIGHT.astype("int64"), np.zeros((4, 6, 1), "float32"), devices=2,
                  strategy="ddp", verbose=0)


def test_masked_targets_of_wrong_shape_are_refused():
    inp = Input(shape=(6,), dtype="int64")
    model = Model(inp, Dense(1)(LSTM(3, return_sequences=True)(
        Embedding(5, 3, mask_zero=True)(inp))))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError):
        model.fit(RIGHT.astype("int64"), np.zeros((4, 1), "float32"), verbose=0)


@pytest.mark.parametrize("rnn,states,sequences", [("LSTM", 2, True), ("GRU", 1, False)])
def test_bidirectional_return_state_matches_keras(rnn, states, sequences, tmp_path):
    """Keras returns [output, forward states..., backward states...]; predict, save/load and
    one SGD step on a loss over every output agree with Keras."""
    import keras
    import bigtrain.layers as B
    from bigtrain.optimizers import SGD
    keras.utils.set_random_seed(0)
    models = []
    for L, I, M in ((keras.layers, keras.Input, keras.Model), (B, B.Input, Model)):
        inp = I(shape=(6,), dtype="int64")
        res = L.Bidirectional(getattr(L, rnn)(4, return_sequences=sequences,
                                              return_state=True))(
            L.Embedding(5, 3, mask_zero=True)(inp))
        assert len(res) == 1 + 2 * states
        models.append(M(inp, list(res)))
    kmodel, model = models
    model.set_weights(kmodel.get_weights())
    ids = ANY.astype("int64")
    want, got = kmodel.predict(ids, verbose=0), model.predict(ids)
    assert [np.shape(a) for a in got] == [np.shape(b) for b in want]
    worst = max(np.abs(np.asarray(a) - b).max() for a, b in zip(got, want))
    model.save(tmp_path / "m.keras")
    for a, b in zip(load_model(tmp_path / "m.keras").predict(ids), got):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() == 0.0
    rng = np.random.default_rng(0)
    ys = [rng.normal(size=np.shape(w)).astype("float32") for w in want]
    kmodel.compile(optimizer=keras.optimizers.SGD(0.5), loss=["mse"] * len(ys))
    kmodel.fit(ids, ys, batch_size=4, epochs=1, shuffle=False, verbose=0)
    model.compile(optimizer=SGD(0.5), loss=["mse"] * len(ys))
    before = model.get_weights()
    model.fit(ids, ys, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), before)) > 1e-3
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst <= 1e-5
