"""Keras's own initializer, regularizer and constraint objects handed to bigtrain's layers
(a script that changed only its `keras.layers` import), held to Keras 3 (torch backend)."""
import keras
import pytest

import bigtrain.layers as B
from bigtrain.api import initializers
from tests.api.harness import keras_parity


def test_keras_regularizer_and_constraint_objects_train_as_keras():
    """They were refused: ValueError: unknown regularizer <keras...L2 object>."""
    def build(L):
        return [L.Dense(4, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.1),
                        bias_regularizer=keras.regularizers.L1L2(0.05, 0.02),
                        kernel_constraint=keras.constraints.MaxNorm(0.4)),
                L.Conv1D(2, 2, kernel_regularizer=keras.regularizers.L1(0.03),
                         kernel_constraint=keras.constraints.MinMaxNorm(0.2, 0.5, rate=0.5))]
    keras_parity(build, (3, 5))


@pytest.mark.parametrize("make", [
    lambda: keras.initializers.GlorotUniform(),
    lambda: keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
    lambda: keras.initializers.Orthogonal(gain=2.0),
    lambda: keras.initializers.Constant(0.3),
])
def test_keras_initializer_objects_and_their_configs_are_taken(make):
    """Keras 3's VarianceScaling family keeps input_axes/output_axes (None) in its
    config, which bigtrain's refused: unexpected keyword argument 'input_axes'."""
    obj = make()
    twin = initializers.get(obj)
    assert type(twin).__name__ == type(obj).__name__
    config = {"class_name": type(obj).__name__, "config": obj.get_config()}
    assert initializers.get(config).get_config() == twin.get_config()
    layer = B.Dense(3, kernel_initializer=obj)
    layer(B.Input((4,)))
    assert layer.get_weights()[0].shape == (4, 3)


def test_a_keras_option_bigtrain_does_not_have_is_refused_by_name():
    obj = keras.initializers.VarianceScaling(input_axes=[0], output_axes=[1])
    with pytest.raises(ValueError, match="VarianceScaling with input_axes=.*drop input_axes"):
        initializers.get(obj)
