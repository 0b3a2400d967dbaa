"""Convolution settings Keras refuses are refused; those it takes still match it."""
import pytest

import bigtrain.layers as B
from tests.api.harness import keras_parity


@pytest.mark.parametrize("make", [
    lambda: B.Conv2D(4, 3, strides=2, dilation_rate=2),
    lambda: B.Conv1D(4, 3, strides=(2,), dilation_rate=3, padding="causal"),
    lambda: B.Conv3D(4, 2, strides=(1, 1, 2), dilation_rate=(2, 1, 1)),
    lambda: B.Conv2DTranspose(4, 3, strides=2, dilation_rate=2),
])
def test_strides_with_dilation_are_refused_as_in_keras(make):
    with pytest.raises(ValueError, match=r"strides > 1 together with dilation_rate > 1"):
        make()


@pytest.mark.parametrize("output_padding,strides", [(2, 2), ((0, 3), (2, 3)), (1, 1)])
def test_output_padding_not_below_strides_is_refused_as_in_keras(output_padding, strides):
    with pytest.raises(ValueError, match=r"output_padding must be smaller than strides"):
        B.Conv2DTranspose(2, 3, strides=strides, output_padding=output_padding)


@pytest.mark.parametrize("build", [
    lambda L: L.DepthwiseConv2D(3, strides=2, dilation_rate=2),
    lambda L: L.SeparableConv2D(3, 3, strides=2, dilation_rate=2, padding="same"),
    lambda L: L.Conv2DTranspose(2, 1, strides=3, output_padding=2),
])
def test_what_keras_takes_still_matches_it(build):
    keras_parity(build, (9, 8, 2))
