"""Convolution layers held to Keras 3's numbers: predict and one SGD step, to 1e-5."""
import pytest
import torch

from bigtrain.layers import Conv1D, Conv2D, Input
from tests.api.harness import keras_parity


@pytest.mark.parametrize("build,shape", [
    (lambda L: L.Conv1D(3, 3), (7, 2)),
    (lambda L: L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu"), (8, 2)),
    (lambda L: L.Conv1D(4, 2, strides=2, padding="same", groups=2), (7, 2)),
    (lambda L: L.Conv2D(3, (3, 2), activation="relu"), (6, 5, 2)),
    (lambda L: L.Conv2D(4, 3, strides=2, padding="same"), (7, 6, 2)),  # uneven same padding
    (lambda L: L.Conv2D(4, 3, padding="same", dilation_rate=2, use_bias=False), (6, 6, 2)),
    (lambda L: L.Conv2D(4, 3, groups=2), (5, 5, 4)),
    (lambda L: L.Conv2D(3, 3, data_format="channels_first"), (2, 5, 5)),
    (lambda L: L.Conv3D(2, 2, padding="same"), (3, 4, 3, 2)),
    (lambda L: L.Conv2DTranspose(3, 3), (4, 3, 2)),
    (lambda L: L.Conv2DTranspose(3, 3, strides=2, padding="same"), (4, 3, 2)),
    (lambda L: L.Conv2DTranspose(2, 2, strides=2), (3, 3, 2)),
    (lambda L: L.Conv2DTranspose(2, 3, strides=2, output_padding=0), (3, 4, 2)),  # was refused
    (lambda L: L.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=(1, 0)),
     (3, 4, 2)),
    (lambda L: L.DepthwiseConv2D(3, depth_multiplier=2), (5, 5, 3)),
    (lambda L: L.DepthwiseConv2D(3, strides=2, padding="same"), (6, 5, 2)),
    (lambda L: L.SeparableConv2D(4, 3, depth_multiplier=2, activation="tanh"), (5, 5, 3)),
    (lambda L: [L.Conv2D(3, 3, activation="relu"), L.Flatten(), L.Dense(2)], (5, 5, 1)),
])
def test_conv_layers_match_keras(build, shape):
    keras_parity(build, shape)


def test_conv2d_runs_in_channels_last_memory_without_copies():
    layer = Conv2D(8, 3, padding="same")
    layer(Input(shape=(6, 6, 4)))
    x = torch.randn(2, 6, 6, 4)
    y = layer(x)
    assert y.shape == (2, 6, 6, 8) and y.is_contiguous()  # NHWC output, no transpose copy
    assert y.movedim(-1, 1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("factory,shape,match", [
    (lambda: Conv2D(4, 3), (8, 8), r"Conv2D 'c'.*rank 4.*\(None, 8, 8\)"),
    (lambda: Conv1D(4, 3), (5, 6, 2), r"Conv1D 'c'.*rank 3.*\(None, 5, 6, 2\)"),
    (lambda: Conv2D(4, 5), (3, 8, 1), r"Conv2D 'c'.*window \(5\).*larger than the input \(3\)"),
    (lambda: Conv2D(4, 3, groups=3), (6, 6, 4), r"groups=3.*input channels \(4\)"),
])
def test_conv_bad_input_names_layer_and_shapes(factory, shape, match):
    layer = factory()
    layer.name = "c"
    with pytest.raises(ValueError, match=match):
        layer(Input(shape=shape))


def test_causal_padding_is_conv1d_only():
    with pytest.raises(ValueError, match="Conv2D 'c2': padding.*'causal'.*only for Conv1D"):
        Conv2D(4, 3, padding="causal", name="c2")


def test_conv_called_on_a_tensor_of_wrong_rank_names_layer_and_shape():
    layer = Conv2D(2, 3, name="c")
    layer(torch.zeros(1, 5, 5, 1))
    with pytest.raises(ValueError, match=r"Conv2D 'c' expects inputs of rank 4.*\(5, 5, 1\)"):
        layer(torch.zeros(5, 5, 1))


def test_conv_model_saves_and_loads(tmp_path):
    import numpy as np
    from bigtrain.layers import Conv2DTranspose, DepthwiseConv2D, SeparableConv2D
    from bigtrain.models import Model, load_model
    inp = Input(shape=(6, 6, 2))
    h = Conv2D(3, 3, strides=2, padding="same", activation="relu")(inp)
    h = DepthwiseConv2D(2, depth_multiplier=2)(SeparableConv2D(4, 1)(h))
    out = Conv2DTranspose(2, 3, strides=2, padding="same")(h)
    model = Model(inp, out)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    model.save(str(tmp_path / "conv.bigtrain"))
    np.testing.assert_array_equal(load_model(str(tmp_path / "conv.bigtrain")).predict(x),
                                  model.predict(x))
