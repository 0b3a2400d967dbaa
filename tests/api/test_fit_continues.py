"""A second fit continues the first one's optimizer, as Keras's fit does (Keras 3 on torch
is the oracle): fit(epochs=1) twice trains exactly as fit(epochs=2) once."""
import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 4)).astype("float32")
Y = (X @ np.array([[3.0], [-2.0], [0.5], [1.0]])).astype("float32")
W0 = [np.ones((4, 1), "float32"), np.zeros(1, "float32")]
FIT = dict(batch_size=16, verbose=0, shuffle=False)  # 4 Adam steps per epoch


def bigtrain_model():
    bigtrain.clear_session()
    inp = Input(shape=(4,))
    model = Model(inp, Dense(1)(inp))
    model.compile(optimizer="adam", loss="mse")
    model.set_weights(W0)
    return model


def keras_model():
    import keras
    inp = keras.Input(shape=(4,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile(optimizer="adam", loss="mse")
    model.set_weights(W0)
    return model


def two_fits(model, recompile=False):
    model.fit(X, Y, epochs=1, **FIT)
    if recompile:
        model.compile(optimizer="adam", loss="mse")
    model.fit(X, Y, epochs=1, **FIT)
    return model.get_weights()[0]


def test_two_fit_calls_train_as_one_call_of_two_epochs_as_in_keras():
    once = bigtrain_model()
    once.fit(X, Y, epochs=2, **FIT)
    twice = two_fits(bigtrain_model())
    np.testing.assert_allclose(twice, once.get_weights()[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(twice, two_fits(keras_model()), rtol=0, atol=1e-5)


def test_a_new_compile_starts_a_fresh_optimizer_as_in_keras():
    once = bigtrain_model()
    once.fit(X, Y, epochs=2, **FIT)
    fresh = two_fits(bigtrain_model(), recompile=True)
    # a fresh Adam's bias correction restarts: the weights move differently
    assert np.abs(fresh - once.get_weights()[0]).max() > 1e-5
    np.testing.assert_allclose(fresh, two_fits(keras_model(), recompile=True), rtol=0, atol=1e-5)


def test_a_learning_rate_set_between_fits_is_kept():
    model = bigtrain_model()
    model.fit(X, Y, epochs=1, **FIT)
    for group in model.optimizer.param_groups:
        group["lr"] = 0.0  # as keras: model.optimizer.learning_rate.assign(0.0)
    before = model.get_weights()[0]
    model.fit(X, Y, epochs=1, **FIT)
    np.testing.assert_array_equal(model.get_weights()[0], before)


def test_a_fit_before_or_after_one_whose_ranks_keep_their_optimizer_says_it_starts_fresh():
    """ddp_cpu_optimizer's host optimizer hands no state back (bigtrain.engine.carry_state);
    ddp, zero1, zero3 do (tests/engine/test_optimizer_after_ranks.py)."""
    model = bigtrain_model()
    model.fit(X, Y, epochs=1, **FIT)
    with pytest.warns(UserWarning, match="fresh adam state"):  # said here, not by a rank
        model.fit(X, Y, epochs=1, strategy="ddp_cpu_optimizer", devices=2, timeout=60, **FIT)
    with pytest.warns(UserWarning, match="fresh Adam state"):
        model.fit(X, Y, epochs=1, **FIT)


def test_a_fit_over_other_parameters_starts_fresh_and_says_so():
    """Frozen parameters change the optimizer's list: the moments must not load by position
    onto other tensors."""
    bigtrain.clear_session()
    inp = Input(shape=(4,))
    model = Model(inp, Dense(1)(Dense(3)(inp)))
    model.compile(optimizer="adam", loss="mse")
    model.fit(X, Y, epochs=1, **FIT)
    first = next(model.net.parameters())
    first.requires_grad_(False)
    with pytest.warns(UserWarning, match="other parameters"):
        model.fit(X, Y, epochs=1, **FIT)
    assert not any(first is p for g in model.optimizer.param_groups for p in g["params"])
