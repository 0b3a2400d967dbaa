"""Shape layers with Keras's arguments: ZeroPadding1D/2D/3D, Cropping1D/2D/3D,
UpSampling1D/2D/3D, Permute and RepeatVector. None has weights; all take channels-last
inputs as Keras."""
from __future__ import annotations

import operator

import torch.nn.functional as F

from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.padding import as_tuple, data_format_of


def _pairs(value, n: int, what: str) -> tuple[tuple[int, int], ...]:
    """Keras's forms: an int (all sides), n ints (symmetric per axis) or n (before, after)."""
    if isinstance(value, int):
        pairs = ((value, value),) * n
    elif n == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        pairs = (tuple(value),)
    else:
        pairs = tuple((v, v) if isinstance(v, int) else tuple(v) for v in value)
    if len(pairs) != n or not all(len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p)
                                  for p in pairs):
        raise ValueError(f"{what} must be an int, {n} ints or {n} (before, after) pairs of "
                         f"non-negative ints, got {value!r}")
    return pairs


def _grow(size: int | None, by: int) -> int | None:
    return None if size is None else size + by  # None: an axis of any size


def _scale(size: int | None, by: int) -> int | None:
    return None if size is None else size * by


def _positive(value, n: int, what: str) -> tuple[int, ...]:
    """An int (numpy's too) or n of them, each positive: a size of 0 would make an empty
    output that fails only later, far from the layer."""
    try:
        values = tuple(map(operator.index, (value,) * n if not hasattr(value, "__len__")
                           else value))
    except TypeError:
        values = ()
    if len(values) != n or min(values) <= 0:
        raise ValueError(f"{what} must be a positive integer"
                         + (f" or {n} of them" if n > 1 else "") + f", got {value!r}")
    return values


class _Spatial(Layer):
    rank = 1
    arg = "padding"

    def __init__(self, value, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pairs = _pairs(value, self.rank, self.arg)
        self.data_format = data_format_of(self, data_format)

    def _first_axis(self, input_shape):
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank "
                             f"{self.rank + 2}, got shape (None, "
                             f"{', '.join(map(str, input_shape))})")
        return 0 if self.data_format == "channels_last" else 1  # first spatial axis, no batch

    def get_config(self):
        config = {"name": self.name, self.arg: [list(p) for p in self.pairs]}
        return config if self.rank == 1 else {**config, "data_format": self.data_format}


class ZeroPadding1D(_Spatial):
    """`keras.layers.ZeroPadding1D(padding=1)` on (B, steps, C)."""

    def __init__(self, padding=1, **kwargs):
        super().__init__(padding, **kwargs)

    def compute_output_shape(self, input_shape):
        first = self._first_axis(input_shape)
        shape = list(input_shape)
        for i, (a, b) in enumerate(self.pairs):
            shape[first + i] = _grow(shape[first + i], a + b)
        return tuple(shape)

    def call(self, x):
        pad = [p for a, b in reversed(self.pairs) for p in (a, b)]
        if self.data_format == "channels_last":
            pad = [0, 0] + pad  # the channels axis is last: F.pad lists the last axis first
        return F.pad(x, pad)


class ZeroPadding2D(ZeroPadding1D):
    """`keras.layers.ZeroPadding2D(padding=(1, 1))` on (B, H, W, C)."""
    rank = 2

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(padding, data_format=data_format, **kwargs)


class ZeroPadding3D(ZeroPadding1D):
    """`keras.layers.ZeroPadding3D(padding=((1, 1), (1, 1), (1, 1)))` on (B, D, H, W, C)."""
    rank = 3

    def __init__(self, padding=((1, 1), (1, 1), (1, 1)), data_format=None, **kwargs):
        super().__init__(padding, data_format=data_format, **kwargs)


class Cropping1D(_Spatial):
    """`keras.layers.Cropping1D(cropping=(1, 1))` on (B, steps, C)."""
    arg = "cropping"

    def __init__(self, cropping=(1, 1), **kwargs):
        super().__init__(cropping, **kwargs)

    def compute_output_shape(self, input_shape):
        first = self._first_axis(input_shape)
        shape = list(input_shape)
        for i, (a, b) in enumerate(self.pairs):
            if shape[first + i] is None:  # an axis of any size stays so
                continue
            if a + b >= shape[first + i]:
                raise ValueError(f"{type(self).__name__} {self.name!r}: cropping {a}+{b} "
                                 f"leaves nothing of an axis of size {shape[first + i]}")
            shape[first + i] -= a + b
        return tuple(shape)

    def call(self, x):
        first = 1 + (0 if self.data_format == "channels_last" else 1)
        index = [slice(None)] * x.dim()
        for i, (a, b) in enumerate(self.pairs):
            index[first + i] = slice(a, x.shape[first + i] - b)
        return x[tuple(index)]


class Cropping2D(Cropping1D):
    """`keras.layers.Cropping2D(cropping=((0, 0), (0, 0)))` on (B, H, W, C)."""
    rank = 2

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(cropping, data_format=data_format, **kwargs)


class Cropping3D(Cropping1D):
    """`keras.layers.Cropping3D(cropping=((1, 1), (1, 1), (1, 1)))` on (B, D, H, W, C)."""
    rank = 3

    def __init__(self, cropping=((1, 1), (1, 1), (1, 1)), data_format=None, **kwargs):
        super().__init__(cropping, data_format=data_format, **kwargs)


class UpSampling1D(Layer):
    """`keras.layers.UpSampling1D(size=2)`: repeats each step `size` times."""

    def __init__(self, size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.size = _positive(size, 1, "UpSampling1D size")[0]

    def compute_output_shape(self, input_shape):
        return (_scale(input_shape[0], self.size), *input_shape[1:])

    def call(self, x):
        return x.repeat_interleave(self.size, dim=1)

    def get_config(self):
        return {"name": self.name, "size": self.size}


class UpSampling2D(Layer):
    """`keras.layers.UpSampling2D(size=(2, 2), interpolation="nearest" | "bilinear")`.

    Bilinear is Keras's resize: half-pixel centres, no antialiasing (torch's
    `interpolate(mode="bilinear", align_corners=False)`).
    """

    modes = ("nearest", "bilinear")

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        self.size = _positive(size, 2, "UpSampling2D size")
        self.data_format = data_format_of(self, data_format)
        self.interpolation = str(interpolation).lower()
        if self.interpolation not in self.modes:
            raise ValueError(f"UpSampling2D supports interpolation in {self.modes}, "
                             f"got {interpolation!r}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"UpSampling2D {self.name!r} expects inputs of rank 4, got "
                             f"shape (None, {', '.join(map(str, input_shape))})")
        h, w = (0, 1) if self.data_format == "channels_last" else (1, 2)
        shape = list(input_shape)
        shape[h], shape[w] = _scale(shape[h], self.size[0]), _scale(shape[w], self.size[1])
        return tuple(shape)

    def call(self, x):
        h = 1 if self.data_format == "channels_last" else 2
        if self.interpolation == "nearest":
            return x.repeat_interleave(self.size[0], dim=h).repeat_interleave(self.size[1],
                                                                              dim=h + 1)
        last = self.data_format == "channels_last"
        nchw = x.permute(0, 3, 1, 2) if last else x  # a view: NHWC memory stays channels_last
        size = (nchw.shape[2] * self.size[0], nchw.shape[3] * self.size[1])  # as Keras
        out = F.interpolate(nchw, size=size, mode="bilinear", align_corners=False)
        return out.permute(0, 2, 3, 1) if last else out

    def get_config(self):
        return {"name": self.name, "size": list(self.size), "data_format": self.data_format,
                "interpolation": self.interpolation}


class UpSampling3D(Layer):
    """`keras.layers.UpSampling3D(size=(2, 2, 2))`: repeats each cell along D, H and W."""

    def __init__(self, size=(2, 2, 2), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.size = as_tuple(size, 3, "size")
        self.data_format = data_format_of(self, data_format)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"UpSampling3D {self.name!r} expects inputs of rank 5, got "
                             f"shape (None, {', '.join(map(str, input_shape))})")
        first = 0 if self.data_format == "channels_last" else 1
        shape = list(input_shape)
        for i, size in enumerate(self.size):
            shape[first + i] = _scale(shape[first + i], size)
        return tuple(shape)

    def call(self, x):
        first = 1 if self.data_format == "channels_last" else 2
        for i, size in enumerate(self.size):
            x = x.repeat_interleave(size, dim=first + i)
        return x

    def get_config(self):
        return {"name": self.name, "size": list(self.size), "data_format": self.data_format}


class Permute(Layer):
    """`keras.layers.Permute(dims)`: reorders the axes after the batch (1-indexed, as Keras)."""

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        self.dims = tuple(dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError(f"Permute dims must be a permutation of 1..{len(self.dims)}, "
                             f"got {dims!r}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != len(self.dims):
            raise ValueError(f"Permute {self.name!r} with dims {self.dims} needs inputs of "
                             f"rank {len(self.dims) + 1}, got shape (None, "
                             f"{', '.join(map(str, input_shape))})")
        return tuple(input_shape[d - 1] for d in self.dims)

    def call(self, x):
        return x.permute(0, *self.dims)

    def get_config(self):
        return {"name": self.name, "dims": list(self.dims)}


class RepeatVector(Layer):
    """`keras.layers.RepeatVector(n)`: (B, features) -> (B, n, features)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = _positive(n, 1, "RepeatVector n")[0]

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"RepeatVector {self.name!r} expects inputs of shape "
                             f"(None, features), got (None, {', '.join(map(str, input_shape))})")
        return (self.n, input_shape[0])

    def call(self, x):
        return x.unsqueeze(1).expand(-1, self.n, -1)

    def get_config(self):
        return {"name": self.name, "n": self.n}
