"""Every name a Keras script may import from keras.layers: Keras's alias names of bigtrain's
layers, three small layers (Identity, UnitNormalization, RMSNormalization) held to Keras 3
(torch backend), and a clear refusal for the layers bigtrain does not offer."""
import keras
import pytest

import bigtrain.layers as B
from bigtrain.api.layers.missing import NOT_OFFERED
from tests.api.harness import keras_parity


def test_every_keras_layer_name_is_offered_or_refused_by_name():
    """`from bigtrain.layers import MaxPool2D` failed: cannot import name 'MaxPool2D'."""
    for name in (n for n in dir(keras.layers) if n[0].isupper()):
        if name in NOT_OFFERED:
            with pytest.raises(ImportError, match=f"no {name}: .*not offered by bigtrain; "):
                exec(f"from bigtrain.layers import {name}", {})
        else:
            assert getattr(B, name) is not None, name
    assert B.MaxPool2D is B.MaxPooling2D and B.Convolution1D is B.Conv1D
    assert not hasattr(B, "NotAKerasLayer")


@pytest.mark.parametrize("build,shape", [
    (lambda L: [L.Dense(3), L.Identity(), L.Dense(2)], (4,)),
    (lambda L: [L.Dense(3), L.UnitNormalization()], (5,)),
    (lambda L: [L.Dense(3), L.UnitNormalization(axis=[1, 2])], (2, 5)),
    (lambda L: [L.Dense(4), L.RMSNormalization()], (3, 5)),
    (lambda L: [L.Dense(4), L.RMSNormalization(axis=[-2, -1], epsilon=1e-3)], (3, 5)),
    (lambda L: [L.Conv2D(2, 3, padding="same"), L.MaxPool2D(), L.GlobalAvgPool2D()],
     (6, 6, 2)),
    (lambda L: [L.Convolution1DTranspose(2, 3, strides=2), L.SeparableConvolution1D(2, 2),
                L.GlobalMaxPool1D()], (5, 3)),
])
def test_small_layers_and_alias_names_match_keras(build, shape):
    keras_parity(build, shape)


def test_small_layers_pass_a_time_step_mask_on_where_keras_does():
    ids = keras.ops.convert_to_numpy(keras.ops.array([[1, 2, 0], [3, 0, 0]]))
    for make in (lambda L: L.Identity(), lambda L: L.UnitNormalization(),
                 lambda L: L.RMSNormalization()):
        kout = make(keras.layers)(keras.layers.Embedding(5, 4, mask_zero=True)(ids))
        inp = B.Input(shape=(3,), dtype="int64")
        ours = make(B)(B.Embedding(5, 4, mask_zero=True)(inp)).masked
        assert ours == (getattr(kout, "_keras_mask", None) is not None)


def test_dense_on_integer_inputs_promotes_them_as_keras():
    """Input(dtype="int32") into Dense failed: mat1 and mat2 must have the same dtype."""
    import numpy as np
    x = np.random.default_rng(0).integers(0, 5, size=(4, 6)).astype("int32")
    keras_parity(lambda L: [L.Dense(3), L.Dense(2)], (6,), input_dtype="int32", x=x)


def test_lambda_takes_an_output_shape_function_as_keras():
    """Lambda(output_shape=<function>) failed: TypeError: 'function' object is not
    iterable."""
    keras_parity(lambda L: [L.Lambda(lambda t: t[:, :2] * 2.0,
                                     output_shape=lambda s: (s[0], 2, s[2])), L.Dense(2)],
                 (4, 3))
