"""Input dtypes as Keras 3 takes them: a float Input of another precision than the layers'
(float64, float16, bfloat16) is cast to their float32, and integer and bool Inputs
("uint8" images, "bool" flags) are accepted; values and one SGD step against Keras."""
import os

import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


def _data(dtype: str):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5, size=(32, 3))
    x = (x > 2.5) if dtype == "bool" else x.astype(dtype)
    return x, rng.normal(size=(32, 2)).astype("float32")


def _pair(dtype):
    """The same Input(dtype) -> Dense(2) model in Keras and in bigtrain, same weights."""
    k_in = keras.Input((3,), dtype=dtype)
    k_model = keras.Model(k_in, keras.layers.Dense(2)(k_in))
    k_model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    bigtrain.clear_session()
    b_in = Input((3,), dtype=dtype)
    b_model = Model(b_in, Dense(2)(b_in))
    b_model.compile(optimizer=SGD(learning_rate=0.01), loss="mse")
    b_model.set_weights(k_model.get_weights())
    return k_model, b_model


@pytest.mark.parametrize("dtype", ["float64", "float16", "uint8", "int16", "bool",
                                   np.float64, np.dtype("uint8")])
def test_input_dtype_predicts_and_trains_as_keras(dtype):
    name = np.dtype(dtype).name
    x, y = _data(name)
    k_model, b_model = _pair(dtype)
    want = k_model.predict(x, verbose=0)
    got = b_model.predict(x, verbose=0)
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b_model(x).detach().numpy(), want, rtol=1e-6, atol=1e-6)
    k_model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    b_model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(b_model.get_weights(), k_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_input_and_tensors_run_a_float32_model():
    x, y = _data("float32")
    xb = torch.tensor(x).bfloat16()
    k_model, b_model = _pair("bfloat16")
    want = k_model.predict(xb.float().numpy(), verbose=0)  # numpy has no bf16: same values
    np.testing.assert_allclose(b_model.predict(xb, verbose=0), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b_model(xb).detach().numpy(), want, rtol=1e-6, atol=1e-6)
    history = b_model.fit(xb, y, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_a_float32_functional_model_takes_half_tensors_outside_autocast():
    x, _ = _data("float32")
    bigtrain.clear_session()
    inp = Input((3,))
    model = Model(inp, Dense(2)(inp))
    for dtype in (torch.bfloat16, torch.float16):
        t = torch.tensor(x).to(dtype)
        out = model(t)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.detach(), model(t.float().numpy()).detach())


def test_unknown_input_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"Input\(dtype='complex'\).*uint8.*bool"):
        Input((3,), dtype="complex")


def test_predict_keeps_the_outputs_dtype_as_keras():
    # Keras's predict gives an integer output as integers (argmax ids), not float32
    x, _ = _data("float32")
    k_in = keras.Input((3,))
    k_model = keras.Model(k_in, keras.layers.Lambda(
        lambda t: keras.ops.argmax(t, -1))(keras.layers.Dense(4)(k_in)))
    bigtrain.clear_session()
    from bigtrain.layers import Lambda
    b_in = Input((3,))
    b_model = Model(b_in, Lambda(lambda t: torch.argmax(t, -1))(Dense(4)(b_in)))
    b_model.set_weights(k_model.get_weights())
    want = k_model.predict(x, verbose=0)
    assert np.issubdtype(want.dtype, np.integer)
    for got in (b_model.predict(x, verbose=0), b_model.predict_on_batch(x)):
        assert np.issubdtype(got.dtype, np.integer)
        np.testing.assert_array_equal(got, want)
    b_model.net.to(torch.bfloat16)  # numpy has no bfloat16: float32 holds every value
    assert b_model.predict(x, verbose=0).dtype == np.int64
    bigtrain.clear_session()
    half = Model(b_in := Input((3,)), Dense(2)(b_in))
    half.net.to(torch.bfloat16)
    want = half(torch.tensor(x)).float().detach().numpy()
    for got in (half.predict(x, verbose=0), half.predict_on_batch(x)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
