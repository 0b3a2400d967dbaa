"""Transposed convolutions with Keras's arguments and weight layouts: Conv1DTranspose,
Conv2DTranspose, Conv3DTranspose.

Keras's kernel is (*kernel, filters, in); torch's `nn.ConvTransposeNd` weight is
(in, filters, *kernel), so the same axis swap as the forward convolutions converts them.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from bigtrain.api.layers.conv import _Conv, _to_torch_kernel, glorot_
from bigtrain.api.layers.padding import as_tuple

_TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _ConvTranspose(_Conv):
    """Shared machinery of the transposed convolutions (rank = number of spatial axes).

    Output sizes follow Keras: "valid" gives (n - 1) * s + max(k, s), "same" gives n * s. As
    Keras's torch backend does, torch's transposed convolution runs unpadded (output
    (n - 1) * s + k) and is then cropped per side to the window JAX/TensorFlow define (an
    asymmetric crop torch's `padding` cannot express); the bias is added after.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None,
                 data_format=None, dilation_rate=1, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, 1,
                         activation, use_bias, **kwargs)
        self.output_padding = (None if output_padding is None else
                               as_tuple(output_padding, self.rank, "output_padding", minimum=0))
        for i, (op, stride) in enumerate(zip(self.output_padding or (), self.strides)):
            if op >= stride:
                raise ValueError(f"{type(self).__name__} {self.name!r}: output_padding must be "
                                 f"smaller than strides on every axis (as in Keras); axis {i} "
                                 f"has output_padding {op} and strides {stride} (output_padding="
                                 f"{self.output_padding}, strides={self.strides})")

    def _crops(self):
        """Per axis (left, right) cells to crop from the unpadded output (< 0: zero-extend)."""
        out = []
        for i, (k, s, d) in enumerate(zip(self.kernel_size, self.strides, self.dilation_rate)):
            k = (k - 1) * d + 1
            op = None if self.output_padding is None else self.output_padding[i]
            if self.padding == "valid":
                left, right = k - 1, k - 1 + (max(k, s) - k if op is None else op)
            else:
                total = s + k - 2 if op is None else k + k % 2 - 2 + op
                left = min(total // 2 + total % 2, k - 1)
                right = total - left
            out.append((k - 1 - left, k - 1 - right))
        return out

    def compute_output_shape(self, input_shape):
        spatial, _ = self._split(input_shape)
        sizes = tuple(None if n is None else (n - 1) * s + (k - 1) * d + 1 - cl - cr
                      for n, k, s, d, (cl, cr) in zip(spatial, self.kernel_size, self.strides,
                                                      self.dilation_rate, self._crops()))
        return self._join(sizes, self.filters)

    def build(self, input_shape):
        _, channels = self._split(input_shape)
        self._pad = None
        crop = [-c for cl, cr in reversed(self._crops()) for c in (cl, cr)]  # F.pad order
        self.conv = _CROPPED[self.rank](channels, self.filters, self.kernel_size, self.strides,
                                        dilation=self.dilation_rate, bias=self.use_bias,
                                        crop=crop)
        area = math.prod(self.kernel_size)
        if not self._init_kernel("kernel", self.conv.weight, _to_torch_kernel,
                                 (*self.kernel_size, self.filters, channels)):
            glorot_(self.conv.weight, area * self.filters, area * channels)  # (*k, out, in)
        self._init_bias(self.conv)

    def _run(self, x):
        return self.conv(x)

    def get_config(self):
        op = None if self.output_padding is None else list(self.output_padding)
        config = super().get_config()
        config.pop("groups")
        return {**config, "output_padding": op}


class _CropMixin:
    """A torch ConvTransposeNd whose forward crops (or zero-extends) its unpadded output
    before adding the bias, as Keras's padding and output_padding place it.

    The whole computation is the submodule's own forward so that wrappers hooking it
    (FSDP2 gathers a sharded weight before forward) see every use of the weight.

    Args:
        crop: F.pad amounts on the spatial axes of the (B, filters, *spatial) output, last
            axis first; < 0 crops.
    """

    def __init__(self, *args, crop: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.crop = list(crop)

    def forward(self, x, output_size=None):
        rank = len(self.crop) // 2
        y = _TRANSPOSED[rank](x, self.weight, None, self.stride, dilation=self.dilation)
        if any(self.crop):
            y = F.pad(y, self.crop)  # negative pads crop
        return y if self.bias is None else y + self.bias.view(-1, *(1,) * rank)


class _CroppedConvTranspose1d(_CropMixin, nn.ConvTranspose1d):
    pass


class _CroppedConvTranspose2d(_CropMixin, nn.ConvTranspose2d):
    pass


class _CroppedConvTranspose3d(_CropMixin, nn.ConvTranspose3d):
    pass


_CROPPED = {1: _CroppedConvTranspose1d, 2: _CroppedConvTranspose2d, 3: _CroppedConvTranspose3d}


class Conv1DTranspose(_ConvTranspose):
    """`keras.layers.Conv1DTranspose` on (B, steps, C); kernel (k, filters, in) in Keras.

    Example:
        h = Conv1DTranspose(8, 3, strides=2, padding="same")(Input(shape=(16, 4)))
    """
    rank = 1


class Conv2DTranspose(_ConvTranspose):
    """`keras.layers.Conv2DTranspose` on (B, H, W, C); kernel (kh, kw, filters, in) in Keras.

    Example:
        h = Conv2DTranspose(8, 3, strides=2, padding="same")(Input(shape=(7, 7, 16)))
    """
    rank = 2


class Conv3DTranspose(_ConvTranspose):
    """`keras.layers.Conv3DTranspose` on (B, D, H, W, C); kernel (kd, kh, kw, filters, in)."""
    rank = 3
