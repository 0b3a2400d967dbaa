"""Keras's call-time keywords in a functional graph, held to Keras 3 on torch: a layer or a
model called with `training=True/False` builds, fits and predicts; as in Keras 3, fit,
evaluate and predict pass their own mode, which wins, and the recorded one applies when
the model is called without `training=` (`model(x)`). A keyword a layer's call does not take
is refused where the graph is built, naming the layer."""
import numpy as np
import pytest
import torch

import bigtrain
import bigtrain.layers as B
from bigtrain.models import Model, load_model, model_from_json
from bigtrain.optimizers import SGD

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(8, 4)) * 3 + 1).astype("float32")
Y = RNG.normal(size=(8, 1)).astype("float32")


def _pair(build):
    import keras
    keras.utils.set_random_seed(0)
    bigtrain.clear_session()
    km, model = build(keras.layers, keras.Model), build(B, Model)
    model.set_weights(km.get_weights())
    return km, model


def _fit_both(km, model, steps=3):
    import keras
    km.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    model.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
    kh = km.fit(X, Y, batch_size=8, epochs=steps, shuffle=False, verbose=0)
    h = model.fit(X, Y, batch_size=8, epochs=steps, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], kh.history["loss"], rtol=1e-5)
    _assert_weights_as_keras(model, km)


def _assert_weights_as_keras(model, km):
    for ours, theirs in zip(model.get_weights(), km.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def _called(model, x):
    """`model(x)` without training=, as a user calls it (numpy out)."""
    out = model(torch.as_tensor(x))
    return out.detach().numpy()


def test_dropout_with_training_true_drops_only_when_called_directly_as_keras():
    def build(L, M):
        i = L.Input((4,))
        return M(i, L.Dropout(0.5)(L.Dense(64, name="d")(i), training=True))
    km, model = _pair(build)
    kernel, bias = km.get_layer("d").get_weights()
    dense = X @ kernel + bias  # what the Dense gives; Dropout zeroes or doubles it
    np.testing.assert_allclose(model.predict(X), km.predict(X, verbose=0), atol=1e-5)
    np.testing.assert_allclose(model.predict(X), dense, atol=1e-5)  # predict's mode wins
    model.eval()  # the recorded mode applies whatever the module's
    for out in (np.asarray(km(X).detach()), _called(model, X)):
        kept = out != 0
        assert 0.3 < kept.mean() < 0.7
        np.testing.assert_allclose(out[kept], 2 * dense[kept], rtol=1e-5)


def test_batchnorm_with_training_false_fits_as_keras():
    def build(L, M):
        i = L.Input((4,))
        return M(i, L.Dense(1)(L.BatchNormalization()(L.Dense(3)(i), training=False)))
    _fit_both(*_pair(build))


def test_batchnorm_with_training_true_predicts_as_keras():
    def build(L, M):
        i = L.Input((4,))
        return M(i, L.BatchNormalization(momentum=0.5)(L.Dense(3)(i), training=True))
    km, model = _pair(build)
    np.testing.assert_allclose(model.predict(X), km.predict(X, verbose=0), atol=1e-5)
    _assert_weights_as_keras(model, km)
    model.eval()
    np.testing.assert_allclose(_called(model, X), np.asarray(km(X).detach()), atol=1e-5)
    _assert_weights_as_keras(model, km)  # the batch moved the moving statistics


def _base_in_inference(L, M):
    """The transfer-learning idiom: a base model called with training=False under a head."""
    i = L.Input((4,), name="base_in")
    base = M(i, L.BatchNormalization(name="bn")(L.Dense(3, name="feat")(i)), name="base")
    j = L.Input((4,), name="x")
    return M(j, L.Dense(1, name="head")(base(j, training=False)))


def test_model_called_with_training_false_fits_and_runs_as_keras(tmp_path):
    km, model = _pair(_base_in_inference)
    _fit_both(km, model)
    want = np.asarray(km(X).detach())  # inference: the moving statistics
    np.testing.assert_allclose(_called(model, X), want, atol=1e-5)
    model.save(str(tmp_path / "m.bigtrain"))  # the mode is part of the architecture
    clone = model_from_json(model.to_json())
    clone.set_weights(model.get_weights())
    for again in (load_model(str(tmp_path / "m.bigtrain")), clone):
        np.testing.assert_allclose(_called(again, X), want, atol=1e-5)


def test_training_keyword_on_real_tensors():
    torch.manual_seed(0)
    drop = B.Dropout(0.5)
    x = torch.ones(2, 1000)
    assert (drop(x, training=True) == 0).any()
    assert not drop.training  # its own mode again afterwards (inference, as Keras's)
    drop.train()
    assert (drop(x, training=False) != 0).all() and drop.training
    i = B.Input((1000,))
    model = Model(i, B.Dropout(0.5)(i))
    model.eval()
    assert (model(x, training=True) == 0).any() and not (model(x) == 0).any()
    assert not model.net.training  # the mode it had


@pytest.mark.parametrize("call, words", [
    (lambda i: B.LSTM(3)(i, initial_state=[B.Dense(3)(B.Flatten()(i))] * 2),
     ["'lstm", "LSTM", "initial_state"]),
    (lambda i: B.LSTM(3)(i, mask=B.Lambda(lambda t: t[..., 0] > 0)(i)),
     ["'lstm", "LSTM", "mask="]),
    (lambda i: B.Dense(3)(i, scale=2.0), ["'dense", "Dense", "scale"]),
])
def test_keywords_a_layer_does_not_take_are_refused_at_graph_build(call, words):
    i = B.Input((5, 4))
    with pytest.raises((TypeError, ValueError)) as err:
        call(i)
    for word in words:
        assert word in str(err.value)


def test_rnn_unroll_and_attention_training_keyword_are_taken():
    """Keras's LSTM(unroll=True) changes no number; mha(q, v, training=False) is Keras's
    call form (it failed with a plain TypeError)."""
    import bigtrain.layers as BL
    inp = BL.Input(shape=(5, 4))
    seq = BL.LSTM(4, unroll=True, return_sequences=True)(inp)
    out = BL.MultiHeadAttention(2, 4)(seq, seq, training=False)
    model = bigtrain.models.Model(inp, out)
    assert model.predict(np.zeros((2, 5, 4), "float32"), verbose=0).shape == (2, 5, 4)
