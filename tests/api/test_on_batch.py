"""train_on_batch / test_on_batch / predict_on_batch / metrics_names held to Keras 3 on torch:
the same calls on both, with the same starting weights, give the same numbers."""
import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model, Sequential

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 4)).astype("float32")
LABELS = RNG.integers(0, 3, 16)
Y = np.eye(3, dtype="float32")[LABELS]
CLASSIFIER = dict(loss="categorical_crossentropy", metrics=["accuracy"])


def pair(optimizer="adam", **compile_args):
    """The same classifier in Keras and bigtrain, compiled alike, with Keras's weights."""
    import keras
    bigtrain.clear_session()
    kmodel = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                               keras.layers.Dense(3, activation="softmax")])
    model = Sequential([Input((4,)), Dense(8, activation="relu"),
                        Dense(3, activation="softmax")])
    kmodel.compile(optimizer=optimizer, **compile_args)
    model.compile(optimizer=optimizer, **compile_args)
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def assert_same_weights(kmodel, model, atol=1e-5):
    for a, b in zip(kmodel.get_weights(), model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=0, atol=atol)


def test_train_on_batch_returns_and_trains_as_keras():
    kmodel, model = pair(**CLASSIFIER)
    start = model.get_weights()[0]
    for _ in range(3):  # Adam's state carries from call to call
        ours, theirs = model.train_on_batch(X, Y), kmodel.train_on_batch(X, Y)
        assert len(ours) == len(theirs) == 2  # [loss, accuracy] of this batch alone
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    ours = model.train_on_batch(X, Y, return_dict=True)
    theirs = kmodel.train_on_batch(X, Y, return_dict=True)
    assert ours.keys() == theirs.keys()
    np.testing.assert_allclose([ours[k] for k in theirs], list(theirs.values()), rtol=1e-5)
    assert_same_weights(kmodel, model)
    assert np.abs(model.get_weights()[0] - start).max() > 1e-3  # the check can see a step


def test_loss_only_model_returns_a_float_as_keras():
    kmodel, model = pair(optimizer="sgd", loss="mse")
    ours, theirs = model.train_on_batch(X, Y), kmodel.train_on_batch(X, Y)
    assert isinstance(ours, float) and isinstance(theirs, float)
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert model.test_on_batch(X, Y) == pytest.approx(kmodel.test_on_batch(X, Y), rel=1e-5)
    assert model.metrics_names == kmodel.metrics_names == ["loss"]


def test_test_and_predict_on_batch_change_nothing_and_match_keras():
    kmodel, model = pair(**CLASSIFIER)
    before = model.get_weights()
    np.testing.assert_allclose(model.test_on_batch(X, Y), kmodel.test_on_batch(X, Y), rtol=1e-5)
    ours, theirs = model.predict_on_batch(X), kmodel.predict_on_batch(X)
    assert isinstance(ours, np.ndarray) and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)  # probabilities, as Keras
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_one_optimizer_state_runs_through_calls_and_fit_as_in_keras():
    kmodel, model = pair(**CLASSIFIER)
    for m in (kmodel, model):
        m.train_on_batch(X, Y)
        m.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        m.train_on_batch(X[:8], Y[:8])
    assert_same_weights(kmodel, model)
    # a new compile starts a fresh optimizer, in both
    for m in (kmodel, model):
        m.compile(optimizer="adam", **CLASSIFIER)
        m.train_on_batch(X, Y)
    assert_same_weights(kmodel, model)


def test_sample_and_class_weights_as_keras():
    kmodel, model = pair(optimizer="sgd", **CLASSIFIER)
    w = np.linspace(0.1, 2.0, 16).astype("float32")
    np.testing.assert_allclose(model.train_on_batch(X, Y, sample_weight=w),
                               kmodel.train_on_batch(X, Y, sample_weight=w), rtol=1e-5)
    cw = {0: 0.5, 1: 2.0, 2: 1.0}
    np.testing.assert_allclose(model.train_on_batch(X, Y, class_weight=cw),
                               kmodel.train_on_batch(X, Y, class_weight=cw), rtol=1e-5)
    assert_same_weights(kmodel, model)
    with pytest.raises(ValueError, match="both class_weight and sample_weight"):
        model.train_on_batch(X, Y, sample_weight=w, class_weight=cw)


def test_several_outputs_in_keras_order():
    import keras
    bigtrain.clear_session()
    ki = keras.Input((4,), name="x")
    kmodel = keras.Model(ki, [keras.layers.Dense(2, name="a")(ki),
                              keras.layers.Dense(3, name="b")(ki)])
    kmodel.compile("sgd", ["mse", "mse"], metrics=[["mae"], ["mse"]])
    bi = Input((4,), name="x")
    model = Model(bi, [Dense(2, name="a")(bi), Dense(3, name="b")(bi)])
    model.compile("sgd", ["mse", "mse"], metrics={"a": ["mae"], "b": ["mse"]})
    model.set_weights(kmodel.get_weights())
    ys = [Y[:, :2] * 3.0, Y]  # outputs of clearly different losses: the order shows
    for _ in range(2):
        np.testing.assert_allclose(model.train_on_batch(X, ys), kmodel.train_on_batch(X, ys),
                                   rtol=1e-5)
    np.testing.assert_allclose(model.test_on_batch(X, ys), kmodel.test_on_batch(X, ys),
                               rtol=1e-5)
    assert model.metrics_names == kmodel.metrics_names  # loss, compile_metrics, a_loss, b_loss
    ours, theirs = model.predict_on_batch(X), kmodel.predict_on_batch(X)
    assert isinstance(ours, list) and len(ours) == len(theirs) == 2


def test_metrics_names_and_reset_metrics_as_keras():
    kmodel, model = pair(**CLASSIFIER)
    assert Sequential([Input((4,)), Dense(1)]).metrics_names == []  # before compile
    assert model.metrics_names == kmodel.metrics_names == ["loss", "compile_metrics"]
    model.train_on_batch(X, Y)
    model.reset_metrics()
    kmodel.train_on_batch(X, Y)
    kmodel.reset_metrics()
    # each call reports its own batch only, with or without reset_metrics
    np.testing.assert_allclose(model.test_on_batch(X[:4], Y[:4]),
                               kmodel.test_on_batch(X[:4], Y[:4]), rtol=1e-5)


def test_a_frozen_model_does_not_train_as_in_keras():
    kmodel, model = pair(**CLASSIFIER)
    before = model.get_weights()
    kmodel.trainable = False
    model.trainable = False
    np.testing.assert_allclose(model.train_on_batch(X, Y), kmodel.train_on_batch(X, Y),
                               rtol=1e-5)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for m in (kmodel, model):  # Keras's optimizer, built frozen, asks for a new compile
        m.trainable = True
        m.compile(optimizer="adam", **CLASSIFIER)
        m.train_on_batch(X, Y)
    assert_same_weights(kmodel, model)
    assert np.abs(model.get_weights()[0] - before[0]).max() > 1e-4


def test_errors_say_what_to_do(monkeypatch):
    model = Sequential([Input((4,)), Dense(3)])
    with pytest.raises(RuntimeError, match="compile"):
        model.train_on_batch(X, Y)
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="targets"):
        model.train_on_batch(X)
    with pytest.raises(ValueError, match="one batch of arrays"):
        model.train_on_batch(iter([(X, Y)]), None)
    import bigtrain.launch.runner as runner
    monkeypatch.setattr(runner, "launched_world_size", lambda: 2)
    fresh = Sequential([Input((4,)), Dense(3)])
    fresh.compile("sgd", "mse")
    with pytest.raises(RuntimeError, match="one process"):
        fresh.train_on_batch(X, Y)
