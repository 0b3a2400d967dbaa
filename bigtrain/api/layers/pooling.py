"""Pooling layers with Keras's arguments: Max/AveragePooling1D/2D/3D and the global poolings
(1D/2D/3D).

Inputs are channels-last as in Keras; like the convolutions, they reach torch's kernels as a
(B, C, ...) view (torch's `channels_last` memory for 2D/3D), with no per-batch transpose.

"same" padding follows Keras's definition (TensorFlow's): the output has ceil(n / stride)
cells, the odd padding cell goes after, max pooling never picks a padding cell and average
pooling averages only the real cells under each window (padding excluded from the count).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.normalization import as_float
from bigtrain.api.layers.padding import as_tuple, data_format_of, same_padding, window_output

_MAX = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
_AVG = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


class _Pool(Layer):
    rank = 2
    average = False

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        n = self.rank
        self.pool_size = as_tuple(pool_size, n, "pool_size")
        self.strides = self.pool_size if strides is None else as_tuple(strides, n, "strides")
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"{type(self).__name__} padding must be 'valid' or 'same', "
                             f"got {padding!r}")
        self.data_format = data_format_of(self, data_format)

    def _spatial(self, input_shape):
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank "
                             f"{self.rank + 2} (batch, {self.rank} spatial axes, channels), got "
                             f"shape (None, {', '.join(map(str, input_shape))})")
        last = self.data_format == "channels_last"
        return (tuple(input_shape[:-1]), input_shape[-1]) if last else \
            (tuple(input_shape[1:]), input_shape[0])

    def compute_output_shape(self, input_shape):
        spatial, channels = self._spatial(input_shape)
        out = tuple(window_output(n, k, s, 1, self.padding, self.name, type(self).__name__)
                    for n, k, s in zip(spatial, self.pool_size, self.strides))
        return (*out, channels) if self.data_format == "channels_last" else (channels, *out)

    def build(self, input_shape):
        self.compute_output_shape(input_shape)  # raises when the window does not fit

    def _pool(self, x):
        """Pool (B, C, *spatial) `x`; "same" padding is worked out for the size `x` has
        (an axis of any size, or a layer shared by inputs of two sizes)."""
        n, spatial = self.rank - 1, x.shape[2:]
        pads = [same_padding(size, k, s) if self.padding == "same" else (0, 0)
                for size, k, s in zip(spatial, self.pool_size, self.strides)]
        if all(a == b for a, b in pads):
            symmetric = tuple(a for a, _ in pads)
            if self.average:
                return _AVG[n](x, self.pool_size, self.strides, symmetric,
                               count_include_pad=False)
            return _MAX[n](x, self.pool_size, self.strides, symmetric)
        pad = [p for a, b in reversed(pads) for p in (a, b)]
        if self.average:  # zero padding, then divide by the real cells under each window
            count = _AVG[n](F.pad(x.new_ones(1, 1, *spatial), pad), self.pool_size,
                            self.strides)
            return _AVG[n](F.pad(x, pad), self.pool_size, self.strides) / count
        return _MAX[n](F.pad(x, pad, value=float("-inf")), self.pool_size, self.strides)

    def call(self, x):
        if self.data_format == "channels_last":
            return self._pool(x.movedim(-1, 1)).movedim(1, -1)
        return self._pool(x)

    def get_config(self):
        return {"name": self.name, "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding, "data_format": self.data_format}


class MaxPooling1D(_Pool):
    """`keras.layers.MaxPooling1D(pool_size=2)` on (B, steps, channels)."""
    rank = 1


class MaxPooling2D(_Pool):
    """`keras.layers.MaxPooling2D(pool_size=(2, 2))` on (B, H, W, C).

    Example:
        h = MaxPooling2D(pool_size=(2, 2))(Conv2D(32, 3)(Input(shape=(28, 28, 1))))
    """
    rank = 2


class MaxPooling3D(_Pool):
    """`keras.layers.MaxPooling3D` on (B, D, H, W, C)."""
    rank = 3


class AveragePooling1D(_Pool):
    """`keras.layers.AveragePooling1D`; with "same", padding cells are not averaged."""
    rank, average = 1, True


class AveragePooling2D(_Pool):
    """`keras.layers.AveragePooling2D`; with "same", padding cells are not averaged."""
    rank, average = 2, True


class AveragePooling3D(_Pool):
    """`keras.layers.AveragePooling3D`; with "same", padding cells are not averaged."""
    rank, average = 3, True


class _GlobalPool(Layer):
    rank = 2
    average = False

    def __init__(self, data_format=None, keepdims: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format_of(self, data_format)
        self.keepdims = bool(keepdims)

    def _axes(self, input_shape):
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank "
                             f"{self.rank + 2}, got shape (None, "
                             f"{', '.join(map(str, input_shape))})")
        first = 1 if self.data_format == "channels_last" else 2
        return tuple(range(first, first + self.rank))  # spatial axes, counting the batch

    def compute_output_shape(self, input_shape):
        axes = self._axes(input_shape)
        if self.keepdims:
            return tuple(1 if i + 1 in axes else s for i, s in enumerate(input_shape))
        return tuple(s for i, s in enumerate(input_shape) if i + 1 not in axes)

    def build(self, input_shape):
        self._dims = self._axes(input_shape)

    def call(self, x):
        if self.average:  # an integer input's mean is a float, as Keras's
            return as_float(x, self).mean(self._dims, keepdim=self.keepdims)
        return x.amax(self._dims, keepdim=self.keepdims)

    def get_config(self):
        return {"name": self.name, "data_format": self.data_format, "keepdims": self.keepdims}


class GlobalMaxPooling1D(_GlobalPool):
    """`keras.layers.GlobalMaxPooling1D`: (B, steps, C) -> (B, C)."""
    rank = 1


class GlobalMaxPooling2D(_GlobalPool):
    """`keras.layers.GlobalMaxPooling2D`: (B, H, W, C) -> (B, C)."""
    rank = 2


class GlobalAveragePooling1D(_GlobalPool):
    """`keras.layers.GlobalAveragePooling1D`: (B, steps, C) -> (B, C); with a time-step
    mask (Embedding(mask_zero=True), Masking) it averages the unmasked steps only, as
    Keras, and the mask ends here."""

    takes_mask = True
    rank, average = 1, True

    def call(self, x, mask=None):
        if mask is None:
            return super().call(x)
        x = as_float(x, self)
        steps = self._dims[0]  # 1 (channels_last) or 2 (channels_first)
        keep = mask.unsqueeze(2 if steps == 1 else 1).bool()  # (B, T, 1) or (B, 1, T)
        total = torch.where(keep, x, 0).sum(steps, keepdim=self.keepdims)
        return total / keep.to(x.dtype).sum(steps, keepdim=self.keepdims)


class GlobalAveragePooling2D(_GlobalPool):
    """`keras.layers.GlobalAveragePooling2D`: (B, H, W, C) -> (B, C)."""
    rank, average = 2, True


class GlobalMaxPooling3D(_GlobalPool):
    """`keras.layers.GlobalMaxPooling3D`: (B, D, H, W, C) -> (B, C)."""
    rank = 3


class GlobalAveragePooling3D(_GlobalPool):
    """`keras.layers.GlobalAveragePooling3D`: (B, D, H, W, C) -> (B, C)."""
    rank, average = 3, True
