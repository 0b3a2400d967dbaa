"""model(x) on numpy arrays, held to Keras 3: arrays become tensors in each Input's dtype
and rank (float64 and ints alike), a list or dict feeds several inputs, and a wrapped torch
module gets float32 tensors."""
import numpy as np
import pytest
import torch
from torch import nn

import bigtrain.layers as B
from bigtrain.models import Model, Sequential


def _two_inputs(L):
    """The same two-input graph from `L` (keras.layers or bigtrain.layers)."""
    a, b = L.Input((3,), name="a"), L.Input((2,), name="b")
    return [a, b], L.Dense(2)(L.Concatenate()([a, b]))


def _both(build, seed=0):
    """(Keras model, bigtrain model with Keras's weights) from one builder."""
    import keras
    keras.utils.set_random_seed(seed)
    kmodel = keras.Model(*build(keras.layers))
    model = Model(*build(B))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("form", ["list", "dict"])
def test_several_numpy_inputs_give_keras_outputs(form):
    kmodel, model = _both(_two_inputs)
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))  # float64, as numpy makes them
    x = [xa, xb] if form == "list" else {"a": xa, "b": xb}
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(_np(out), _np(kmodel(x)), atol=1e-6)


def test_integer_and_rank_short_arrays_meet_the_input_as_in_keras():
    def build(L):  # ints into a float Input; (n,) into Input(shape=(1,))
        a, b = L.Input((3,), name="a"), L.Input((1,), name="b")
        return [a, b], L.Dense(2)(L.Concatenate()([a, b]))
    kmodel, model = _both(build)
    x = [np.arange(12).reshape(4, 3), np.arange(4.0)]
    np.testing.assert_allclose(_np(model(x)), _np(kmodel(x)), atol=1e-5)


def test_int64_token_ids_into_an_int32_input():
    def build(L):
        i = L.Input((3,), dtype="int32")
        return i, L.Embedding(5, 2)(i)
    kmodel, model = _both(build)
    x = np.array([[1, 2, 3], [4, 0, 1]], dtype=np.int64)
    np.testing.assert_allclose(_np(model(x)), _np(kmodel(x)), atol=1e-6)


def test_a_sequential_takes_a_float64_array():
    import keras
    keras.utils.set_random_seed(0)
    kmodel = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh")])
    model = Sequential([B.Input((3,)), B.Dense(2, activation="tanh")])
    model.set_weights(kmodel.get_weights())
    x = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(_np(model(x)), _np(kmodel(x)), atol=1e-6)


def test_a_wrapped_torch_module_gets_float32_tensors():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    model = Model(net)
    x = np.random.default_rng(2).normal(size=(4, 3))
    out = model(x)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(_np(out), _np(net(torch.tensor(x, dtype=torch.float32))),
                               atol=1e-6)


def test_torch_tensors_pass_as_given():
    """Tensors are not recast (a model called as a layer passes activations in the step's
    precision): a double model still runs on double tensors."""
    inp = B.Input((3,))
    model = Model(inp, B.Dense(2)(inp)).double()
    assert model(torch.ones(2, 3, dtype=torch.float64)).dtype == torch.float64
    assert model(np.ones((2, 3))).dtype == torch.float64  # arrays take the weights' precision
