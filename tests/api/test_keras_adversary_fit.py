"""fit/evaluate arguments in the forms a Keras script passes them, held to Keras 3 (torch
backend): a sample_weight per time step of a temporal output."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 6, 5)).astype("float32")
Y = RNG.normal(size=(40, 6, 2)).astype("float32")
STEP_WEIGHTS = RNG.uniform(0.0, 2.0, size=(40, 6)).astype("float32")
IDS = RNG.integers(1, 7, size=(40, 6))
IDS[::3, 4:] = 0  # trailing padding in every third row
IDS[1::3, :2] = 0  # leading padding in the next


def _dense(L, inp):
    return L.Dense(2)(inp)


def _masked(L, inp):
    return L.Dense(2)(L.LSTM(3, return_sequences=True)(L.Embedding(7, 4, mask_zero=True)(inp)))


def _pair(body, x, dtype, **compile_args):
    import keras
    keras.utils.set_random_seed(0)
    kin = keras.Input(x.shape[1:], dtype=dtype)
    kmodel = keras.Model(kin, body(keras.layers, kin))
    bin_ = B.Input(x.shape[1:], dtype=dtype)
    model = Model(bin_, body(B, bin_))
    model.set_weights(kmodel.get_weights())
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss="mse", **compile_args)
    return kmodel, model


def _fit_both(kmodel, model, x, weights):
    kh = kmodel.fit(x, Y, sample_weight=weights, batch_size=8, epochs=2, shuffle=False,
                    verbose=0)
    bh = model.fit(x, Y, sample_weight=weights, batch_size=8, epochs=2, shuffle=False,
                   verbose=0)
    for key in kh.history:
        np.testing.assert_allclose(bh.history[key], kh.history[key], rtol=1e-5, atol=1e-6)
    for got, want in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(model.evaluate(x, Y, sample_weight=weights),
                               kmodel.evaluate(x, Y, sample_weight=weights, verbose=0),
                               rtol=1e-5)


@pytest.mark.parametrize("body,x,dtype", [(_dense, X, "float32"), (_masked, IDS, "int64")],
                         ids=["dense", "embedding-mask-lstm"])
@pytest.mark.parametrize("weights", [STEP_WEIGHTS, STEP_WEIGHTS[..., None]],
                         ids=["batch-steps", "batch-steps-1"])
def test_a_weight_per_time_step_trains_and_evaluates_as_keras(body, x, dtype, weights):
    """Keras weighs each step of a temporal output by a (batch, timesteps) sample_weight;
    bigtrain failed: RuntimeError: The expanded size of the tensor (8) must match the
    existing size (48)."""
    _fit_both(*_pair(body, x, dtype), x, weights)


def test_a_weight_per_time_step_weighs_the_metrics_as_keras():
    _fit_both(*_pair(_dense, X, "float32", weighted_metrics=["mae"]), X, STEP_WEIGHTS)


def test_a_weight_that_fits_no_axis_is_refused_clearly():
    inp = B.Input((6, 5))
    model = Model(inp, B.Dense(2)(inp))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"sample_weight of shape \(8, 5\).*timesteps"):
        model.fit(X, Y, sample_weight=STEP_WEIGHTS[:, :5], batch_size=8, verbose=0)


FLAT_X = RNG.normal(size=(24, 5)).astype("float32")
POSITIVE = np.abs(RNG.normal(size=(24, 3))).astype("float32") + 0.1
ONE_HOT = np.eye(3, dtype="float32")[RNG.integers(0, 3, size=24)]
SIGNS = np.where(RNG.normal(size=(24, 3)) > 0, 1.0, -1.0).astype("float32")


@pytest.mark.parametrize("loss,y,activation", [
    ("mape", POSITIVE, "softplus"), ("msle", POSITIVE, "softplus"),
    ("poisson", POSITIVE, "softplus"), ("log_cosh", POSITIVE, None),
    ("kl_divergence", ONE_HOT, "softmax"), ("hinge", SIGNS, "tanh"),
    ("squared_hinge", SIGNS, "tanh"), ("categorical_hinge", ONE_HOT, "softmax"),
    ("binary_focal_crossentropy", (SIGNS > 0).astype("float32"), "sigmoid"),
    ("categorical_focal_crossentropy", ONE_HOT, "softmax"),
    ("dice", (SIGNS > 0).astype("float32"), "sigmoid"),
])
def test_keras_loss_names_train_as_keras(loss, y, activation, tmp_path):
    """compile(loss="mape") and Keras's other loss names were refused: unknown loss."""
    import keras

    def body(L, inp):
        return L.Dense(3, activation=activation)(L.Dense(4, activation="tanh")(inp))
    keras.utils.set_random_seed(0)
    kin = keras.Input((5,))
    kmodel = keras.Model(kin, body(keras.layers, kin))
    bin_ = B.Input((5,))
    model = Model(bin_, body(B, bin_))
    model.set_weights(kmodel.get_weights())
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss=loss)
    kh = kmodel.fit(FLAT_X, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    bh = model.fit(FLAT_X, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(bh.history["loss"], kh.history["loss"], rtol=1e-5, atol=1e-6)
    for got, want in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)
    if loss == "mape":  # the loss travels with the saved model
        from bigtrain.models import load_model
        model.save(str(tmp_path / "m.bigtrain"))
        loaded = load_model(str(tmp_path / "m.bigtrain"))
        np.testing.assert_allclose(loaded.evaluate(FLAT_X, y), model.evaluate(FLAT_X, y),
                                   rtol=1e-6)
