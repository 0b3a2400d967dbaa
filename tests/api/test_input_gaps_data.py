"""fit's inputs held to Keras 3: torch float64 tensors train as float32 (Keras casts to its
floatx, as bigtrain casts numpy float64), a DataLoader's own batches rule over fit's
batch_size (Keras iterates the loader), workers= given for data it does not load warns,
and an endless validation generator read without validation_steps warns before it could
hang (Keras reads it for ever)."""
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 3)).astype("float32")
Y = RNG.normal(size=(20, 2)).astype("float32")
SW = RNG.uniform(0.5, 2.0, 20).astype("float32")


def _model(loss="mse", **compile_kw):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(3,))
    model = Model(inp, Dense(2)(Dense(4, activation="tanh")(inp)))
    model.compile(optimizer="sgd", loss=loss, **compile_kw)
    return model


def _diff(a, b) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


def test_float64_tensors_train_as_float32_like_numpy():
    """Targets and weights as float64 tensors reach the loss and weighted metrics as
    float32, and the fit equals the float32 arrays' step for step."""
    seen = []

    def recording_mse(y_true, y_pred):
        seen.append(y_true.dtype)
        return ((y_true - y_pred) ** 2).mean(-1)

    fit = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    got = _model(recording_mse, weighted_metrics=["mae"])
    h64 = got.fit(torch.from_numpy(X).double(), torch.from_numpy(Y).double(),
                  sample_weight=torch.from_numpy(SW).double(), **fit).history
    assert seen and set(seen) == {torch.float32}
    ref = _model(recording_mse, weighted_metrics=["mae"])
    h32 = ref.fit(X, Y, sample_weight=SW, **fit).history
    assert _diff(got.get_weights(), ref.get_weights()) < 1e-6
    np.testing.assert_allclose(h64["mae"], h32["mae"], rtol=1e-6)


def test_model_called_on_a_float64_tensor_as_keras():
    """Keras's layers cast a float64 tensor to float32; a float32 model failed on it."""
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    kinp = keras.Input((3,))
    kmodel = keras.Model(kinp, keras.layers.Dense(2)(kinp))
    inp = Input(shape=(3,))
    model = Model(inp, Dense(2)(inp))
    model.set_weights(kmodel.get_weights())
    x = torch.from_numpy(X).double()
    out = model(x)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), kmodel(x).detach().numpy(), atol=1e-6)
    wrapped = Model(torch.nn.Linear(3, 2))
    assert wrapped(x).dtype == torch.float32


def test_dataloader_batches_rule_over_fits_batch_size_with_a_warning():
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=5)
    told = _model()
    with pytest.warns(UserWarning, match=r"batch_size=2, but x is a DataLoader of batches "
                                         r"of 5"):
        told.fit(loader, batch_size=2, epochs=2, verbose=0)
    own = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loader's own size given again: no warning
        own.fit(loader, batch_size=5, epochs=2, verbose=0)
    arrays = _model()
    arrays.fit(X, Y, batch_size=5, epochs=2, shuffle=False, verbose=0)
    assert _diff(told.get_weights(), arrays.get_weights()) < 1e-6
    assert _diff(own.get_weights(), arrays.get_weights()) < 1e-6


def test_workers_given_for_arrays_or_a_generator_warn():
    model = _model()
    with pytest.warns(UserWarning, match="fit ignores workers= here.*x is arrays"):
        model.fit(X, Y, workers=2, verbose=0)
    gen = ((X[i:i + 5], Y[i:i + 5]) for i in range(0, 20, 5))
    with pytest.warns(UserWarning, match="fit ignores prefetch= .*read in order"):
        model.fit(gen, prefetch=4, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Dataset's loading, and workers=0: no warning
        model.fit(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), workers=1,
                  batch_size=5, verbose=0)
        model.fit(X, Y, workers=0, verbose=0)


def test_endless_validation_generator_warns_before_it_could_hang():
    """Read without validation_steps, a generator is read to its end: past 1000 batches
    fit says so (this one stops itself at 1010, as an endless one would not)."""
    def endless():
        for k in range(1010):
            yield X[:2], Y[:2]
        raise RuntimeError("read on past the warning")

    model = _model()
    with pytest.warns(UserWarning, match="validation_data has given 1000 batches.*"
                                         "validation_steps="), \
            pytest.raises(RuntimeError, match="read on past the warning"):
        model.fit(X, Y, validation_data=endless(), verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite one, or validation_steps: no warning
        finite = ((X[i:i + 4], Y[i:i + 4]) for i in range(0, 20, 4))
        h = model.fit(X, Y, validation_data=finite, verbose=0).history
        np.testing.assert_allclose(h["val_loss"][0], model.evaluate(X, Y), rtol=1e-6)
        model.fit(X, Y, validation_data=endless(), validation_steps=3, verbose=0)
