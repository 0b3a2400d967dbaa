"""Preprocessing and noise layers with Keras's arguments: Rescaling, Normalization (with
`adapt`), GaussianNoise, SpatialDropout1D/2D, and Lambda (a torch callable)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bigtrain.api.layers.base import Layer


class Rescaling(Layer):
    """`keras.layers.Rescaling(scale, offset=0.0)`: x * scale + offset (e.g. 1/255 for pixels)."""

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, scale: float, offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = float(scale), float(offset)

    def call(self, x):
        return x * self.scale + self.offset

    def get_config(self):
        return {"name": self.name, "scale": self.scale, "offset": self.offset}


class Normalization(Layer):
    """`keras.layers.Normalization(axis=-1)`: (x - mean) / sqrt(variance) per feature.

    The statistics come from `adapt(data)` (over every axis but `axis`) or from `mean=` and
    `variance=`. They are non-trainable weights, listed as Keras does: mean, variance and a
    count (which Keras 3 keeps at 0).

    Example:
        norm = Normalization()
        norm.adapt(x_train)
        model = Sequential([Input(shape=(8,)), norm, Dense(1)])
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, axis=-1, mean=None, variance=None, invert: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.invert = bool(invert)
        if (mean is None) != (variance is None):
            raise ValueError("Normalization takes both mean= and variance=, or neither "
                             "(then call adapt(data))")
        self._given = None if mean is None else (np.asarray(mean, "float32"),
                                                 np.asarray(variance, "float32"))
        self._adapted = None

    def _feature_axis(self, rank: int) -> int:
        """The feature axis counted without the batch axis."""
        axis = self.axis if self.axis >= 0 else rank + 1 + self.axis
        if not 1 <= axis <= rank:
            raise ValueError(f"Normalization {self.name!r}: axis={self.axis} is not a feature "
                             f"axis of inputs with {rank} axes after the batch")
        return axis - 1

    def adapt(self, data) -> None:
        """Compute the mean and variance of `data` (numpy or tensor, batch first)."""
        data = np.asarray(data, dtype="float64")
        axis = self._feature_axis(data.ndim - 1) + 1
        reduce = tuple(i for i in range(data.ndim) if i != axis)
        self._adapted = (data.mean(reduce), data.var(reduce), 0.0)  # Keras 3 leaves count at 0
        if self.built:
            self._load(*self._adapted)

    def build(self, input_shape):
        features = input_shape[self._feature_axis(len(input_shape))]
        self.mean = nn.Parameter(torch.zeros(features), requires_grad=False)
        self.variance = nn.Parameter(torch.ones(features), requires_grad=False)
        self.count = nn.Parameter(torch.zeros(()), requires_grad=False)
        self._bshape = [1] * (len(input_shape) + 1)
        self._bshape[self._feature_axis(len(input_shape)) + 1] = features
        if self._adapted is not None:
            self._load(*self._adapted)
        elif self._given is not None:
            self._load(*self._given, 0.0)

    def _load(self, mean, variance, count):
        def to_tensor(values, like):
            return torch.as_tensor(np.array(np.broadcast_to(values, like.shape), "float32"))

        with torch.no_grad():
            self.mean.copy_(to_tensor(mean, self.mean))
            self.variance.copy_(to_tensor(variance, self.variance))
            self.count.fill_(count)

    def call(self, x):
        mean, var = self.mean.view(self._bshape), self.variance.view(self._bshape)
        std = var.sqrt().clamp_min(1e-7)  # Keras's epsilon
        return x * std + mean if self.invert else (x - mean) / std

    def get_config(self):
        return {"name": self.name, "axis": self.axis, "invert": self.invert}


class GaussianNoise(Layer):
    """`keras.layers.GaussianNoise(stddev)`: adds N(0, stddev^2) noise in training only."""

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, stddev: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = float(stddev)

    def call(self, x):
        return x + torch.randn_like(x) * self.stddev if self.training else x

    def get_config(self):
        return {"name": self.name, "stddev": self.stddev}


class SpatialDropout1D(Layer):
    """`keras.layers.SpatialDropout1D(rate)`: drops whole channels of (B, steps, C)."""

    rank = 1

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{type(self).__name__} rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank "
                             f"{self.rank + 2}, got shape (None, "
                             f"{', '.join(map(str, input_shape))})")
        return input_shape

    def call(self, x):
        if not self.training or self.rate == 0.0:
            return x
        shape = (x.shape[0], *([1] * self.rank), x.shape[-1])  # one draw per sample and channel
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate)

    def get_config(self):
        return {"name": self.name, "rate": self.rate}


class SpatialDropout2D(SpatialDropout1D):
    """`keras.layers.SpatialDropout2D(rate)`: drops whole channels of (B, H, W, C)."""

    rank = 2


class Lambda(Layer):
    """`keras.layers.Lambda(function)`: wraps a torch callable as a layer.

    The output shape is found by running `function` on a zero batch unless `output_shape` is
    given. A Lambda cannot be saved with `Model.save` (storing a Python callable would need
    pickle); use `save_weights`, or write a `Layer` subclass.

    Example:
        h = Lambda(lambda t: t * 2.0)(Input(shape=(4,)))
    """

    def __init__(self, function, output_shape=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda takes a callable, got {type(function).__name__}")
        self.function = function
        self.output_shape = None if output_shape is None else tuple(output_shape)

    def compute_output_shape(self, input_shape):
        if self.output_shape is not None:
            return self.output_shape
        with torch.no_grad():
            return tuple(self.function(torch.zeros(2, *input_shape)).shape[1:])

    def call(self, x):
        return self.function(x)

    def get_config(self):
        raise ValueError(f"Lambda layer {self.name!r} holds a Python callable, which "
                         "Model.save cannot store without pickle; save the weights with "
                         "save_weights(), or replace the Lambda by a Layer subclass")


class Masking(Layer):
    """`keras.layers.Masking(mask_value=0.0)`: a step whose features all equal `mask_value` is
    padding. Outputs the inputs with those steps zeroed and marks them for the recurrent
    layers after it (Keras's mask, (B, T) bool: any feature differs from mask_value).
    """

    makes_mask = True

    def __init__(self, mask_value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = float(mask_value)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2:
            shape = ", ".join(map(str, input_shape))
            raise ValueError(f"Masking {self.name!r} expects inputs of rank >= 3 (batch, "
                             f"timesteps, features), got (None, {shape})")
        return input_shape

    def compute_mask(self, x, mask=None):
        return (x != self.mask_value).any(-1)  # (B, T) bool

    def call(self, x):
        keep = self.compute_mask(x)
        out = x * keep[..., None].to(x.dtype)
        out._keras_mask = keep
        return out

    def get_config(self):
        return {"name": self.name, "mask_value": self.mask_value}
