"""Core layers and Keras-2 idioms held to Keras 3's numbers (predict and one SGD step)."""
import warnings

import numpy as np
import pytest

from bigtrain.layers import Dense
from bigtrain.models import Sequential
from tests.api.harness import keras_parity


@pytest.mark.parametrize("build,shape,dtype", [
    (lambda L: [L.Dense(5, activation="relu"), L.Dense(3)], (4,), "float32"),
    (lambda L: [L.Embedding(7, 3), L.Flatten(), L.Dense(2)], (5,), "int64"),
    (lambda L: [L.Dense(4), L.LayerNormalization()], (3, 6), "float32"),
])
def test_core_layers_match_keras(build, shape, dtype):
    keras_parity(build, shape, input_dtype=dtype)


def test_parity_check_can_fail():
    # the same line, with a different activation on the bigtrain side, must be caught
    with pytest.raises(AssertionError, match="predict differs"):
        keras_parity(lambda L: L.Dense(3, activation="tanh" if L.__name__ == "bigtrain.layers"
                                       else "relu"), (4,))


def test_input_dim_and_input_shape_build_a_sequential_with_a_warning():
    with pytest.warns(UserWarning, match="input_shape`/`input_dim"):
        model = Sequential([Dense(8, input_dim=20, activation="relu"), Dense(2)])
    assert model.input_shapes == [(20,)] and model.output_shapes == [(2,)]
    with pytest.warns(UserWarning, match="input_shape"):
        model = Sequential([Dense(8, input_shape=(3, 20)), Dense(2)])
    assert model.output_shapes == [(3, 2)]
    assert model.predict(np.zeros((2, 3, 20), "float32")).shape == (2, 3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Dense(3)  # no warning without the Keras-2 arguments
