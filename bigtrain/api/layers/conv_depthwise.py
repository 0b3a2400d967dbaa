"""Depthwise and separable convolutions with Keras's arguments and weight layouts:
DepthwiseConv1D/2D and SeparableConv1D/2D.

Keras's depthwise kernel is (*kernel, in, depth_multiplier); torch runs it as a grouped
convolution (groups = in) whose weight is (in * dm, 1, *kernel), output channel c * dm + m.
"""
from __future__ import annotations

import math

from torch import nn

from bigtrain.api.layers.weight_options import WeightOptions
from bigtrain.api.layers.conv import _Conv, _same, _to_keras_kernel, _to_torch_kernel, glorot_


def _depthwise_to_keras(w, dm):
    """torch (in * dm, 1, *k) -> Keras (*k, in, dm)."""
    return w.reshape(-1, dm, *w.shape[2:]).permute(*range(2, w.dim()), 0, 1)


def _depthwise_to_torch(k):
    """Keras (*k, in, dm) -> torch (in * dm, 1, *k)."""
    n = k.dim() - 2
    return k.permute(n, n + 1, *range(n)).reshape(-1, 1, *k.shape[:n])


class _Depthwise(_Conv):
    """`keras.layers.DepthwiseConvND`: one filter per input channel and multiplier."""
    strided_dilation = True

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=1, activation=None, use_bias=True, **kwargs):
        options = _pop_options(kwargs, "depthwise")
        super().__init__(1, kernel_size, strides, padding, data_format, dilation_rate, 1,
                         activation, use_bias, **kwargs)
        self.weight_options = {"depthwise": options["depthwise"],
                               "bias": self.weight_options["bias"]}
        self.depth_multiplier = int(depth_multiplier)

    def keras_weights_keys(self):
        return [("depthwise", "conv.weight")] + ([("bias", "conv.bias")] if self.use_bias
                                                 else [])

    def build(self, input_shape):
        spatial, channels = self._split(input_shape)
        self.filters = channels * self.depth_multiplier
        self.conv = self._spatial_conv(spatial, channels, self.filters, channels, self.use_bias)
        area = math.prod(self.kernel_size)
        if not self._init_kernel("depthwise", self.conv.weight, _depthwise_to_torch,
                                 (*self.kernel_size, channels, self.depth_multiplier)):
            glorot_(self.conv.weight, area * channels, area * self.depth_multiplier)
        self._init_bias(self.conv)

    def compute_output_shape(self, input_shape):
        spatial, channels = self._split(input_shape)
        return self._join(self._spatial_out(spatial), channels * self.depth_multiplier)

    def keras_weights(self):
        dm = self.depth_multiplier
        slots = [("conv.weight", lambda w: _depthwise_to_keras(w, dm), _depthwise_to_torch)]
        return slots + ([("conv.bias", _same, _same)] if self.use_bias else [])

    def get_config(self):
        config = super().get_config()
        for key in ("filters", "groups"):
            config.pop(key)
        return {**config, "depth_multiplier": self.depth_multiplier}


class DepthwiseConv1D(_Depthwise):
    """`keras.layers.DepthwiseConv1D` on (B, steps, C); kernel (k, in, dm) in Keras.

    Example:
        h = DepthwiseConv1D(3, depth_multiplier=2)(Input(shape=(16, 4)))
    """
    rank = 1


class DepthwiseConv2D(_Depthwise):
    """`keras.layers.DepthwiseConv2D` on (B, H, W, C); kernel (kh, kw, in, dm) in Keras."""
    rank = 2


class _Separable(_Conv):
    """`keras.layers.SeparableConvND`: a depthwise convolution per channel, then a 1x..x1
    convolution to `filters`. Keras weights: depthwise (*k, in, dm), pointwise
    (1, ..., 1, in * dm, filters), bias (filters,)."""
    strided_dilation = True

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True, **kwargs):
        options = _pop_options(kwargs, "depthwise", "pointwise")
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, 1,
                         activation, use_bias, **kwargs)
        self.weight_options = {**options, "bias": self.weight_options["bias"]}
        self.depth_multiplier = int(depth_multiplier)

    def keras_weights_keys(self):
        return [("depthwise", "depthwise.weight"), ("pointwise", "pointwise.weight")] + (
            [("bias", "pointwise.bias")] if self.use_bias else [])

    def build(self, input_shape):
        spatial, channels = self._split(input_shape)
        inner = channels * self.depth_multiplier
        self.depthwise = self._spatial_conv(spatial, channels, inner, channels, False)
        pointwise = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.rank - 1]
        self.pointwise = pointwise(inner, self.filters, 1, bias=self.use_bias)
        area = math.prod(self.kernel_size)
        if not self._init_kernel("depthwise", self.depthwise.weight, _depthwise_to_torch,
                                 (*self.kernel_size, channels, self.depth_multiplier)):
            glorot_(self.depthwise.weight, area * channels, area * self.depth_multiplier)
        if not self._init_kernel("pointwise", self.pointwise.weight, _to_torch_kernel,
                                 ((1,) * self.rank + (inner, self.filters))):
            glorot_(self.pointwise.weight, inner, self.filters)
        self._init_bias(self.pointwise)

    def _run(self, x):
        return self.pointwise(self.depthwise(x))

    def keras_weights(self):
        dm = self.depth_multiplier
        slots = [("depthwise.weight", lambda w: _depthwise_to_keras(w, dm), _depthwise_to_torch),
                 ("pointwise.weight", _to_keras_kernel, _to_torch_kernel)]
        return slots + ([("pointwise.bias", _same, _same)] if self.use_bias else [])

    def get_config(self):
        config = super().get_config()
        config.pop("groups")
        return {**config, "depth_multiplier": self.depth_multiplier}


class SeparableConv1D(_Separable):
    """`keras.layers.SeparableConv1D` on (B, steps, C).

    Example:
        h = SeparableConv1D(8, 3, padding="same")(Input(shape=(16, 4)))
    """
    rank = 1


class SeparableConv2D(_Separable):
    """`keras.layers.SeparableConv2D` on (B, H, W, C)."""
    rank = 2


def _pop_options(kwargs: dict, *roles: str) -> dict:
    """WeightOptions of the depthwise/pointwise kernels, taken out of `kwargs` (Keras's
    glorot_uniform default). These layers have no `kernel`: kernel_* is refused, as Keras
    refuses it, rather than ignored."""
    given = sorted(k for k in kwargs if k.startswith("kernel_"))
    if given:
        raise ValueError(f"{', '.join(given)}: this layer's kernels are "
                         f"{' and '.join(roles)}; pass {roles[0]}_initializer etc. instead")
    return {role: WeightOptions("glorot_uniform", kwargs.pop(f"{role}_initializer",
                                                             "glorot_uniform"),
                                kwargs.pop(f"{role}_regularizer", None),
                                kwargs.pop(f"{role}_constraint", None)) for role in roles}
