"""Noise and dropout layers with Keras's arguments: GaussianNoise, GaussianDropout,
AlphaDropout and SpatialDropout1D/2D/3D. Each is the identity outside training and passes a
time-step mask on, as in Keras.

`seed` is accepted for Keras code and not used: the noise comes from torch's generator,
which `bigtrain.set_seed` seeds.
"""
from __future__ import annotations

import math
import numbers

import torch

from bigtrain.api.layers.base import Layer


def _check_rate(layer: Layer, rate: float, top_open: bool = True) -> float:
    if not (0.0 <= rate < 1.0 if top_open else 0.0 <= rate <= 1.0):
        bound = "[0, 1)" if top_open else "[0, 1]"
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: rate must be in {bound}, "
                         f"got {rate}")
    return float(rate)


class GaussianNoise(Layer):
    """`keras.layers.GaussianNoise(stddev)`: adds N(0, stddev^2) noise in training only."""

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, stddev: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(stddev, numbers.Real) or isinstance(stddev, bool) or stddev < 0:
            raise ValueError(f"GaussianNoise {self.name!r}: stddev must be a number >= 0, "
                             f"got {stddev!r}")
        self.stddev = float(stddev)
        self.seed = seed

    def call(self, x):
        return x + torch.randn_like(x) * self.stddev if self.training else x

    def get_config(self):
        return {"name": self.name, "stddev": self.stddev, "seed": self.seed}


class GaussianDropout(Layer):
    """`keras.layers.GaussianDropout(rate)`: multiplies by N(1, rate / (1 - rate)) noise in
    training only (the mean is kept, so nothing is rescaled at inference)."""

    supports_masking = True

    def __init__(self, rate: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate(self, rate)
        self.seed = seed

    def call(self, x):
        if not self.training or self.rate == 0.0:
            return x
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        return x * (1.0 + stddev * torch.randn_like(x))

    def get_config(self):
        return {"name": self.name, "rate": self.rate, "seed": self.seed}


# SELU's constants: a dropped unit is set to SELU's negative saturation, alpha' below
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


class AlphaDropout(Layer):
    """`keras.layers.AlphaDropout(rate, noise_shape=None)`: dropout for SELU networks.

    In training a dropped unit becomes alpha' = -alpha * scale (SELU's saturation), then
    a * x + b restores the inputs' mean and variance (Keras's formula). `noise_shape`
    (batch axis first, None for the input's size) shares a draw over axes set to 1.
    """

    supports_masking = True

    def __init__(self, rate: float, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate(self, rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed

    def call(self, x):
        if not self.training or self.rate == 0.0:
            return x
        shape = x.shape if self.noise_shape is None else \
            [d if n is None else n for n, d in zip(self.noise_shape, x.shape)]
        keep = (torch.rand(shape, device=x.device) >= self.rate).to(x.dtype)
        alpha_p = -_SELU_ALPHA * _SELU_SCALE
        a = ((1 - self.rate) * (1 + self.rate * alpha_p ** 2)) ** -0.5
        b = -a * alpha_p * self.rate
        return a * (x * keep + alpha_p * (1 - keep)) + b

    def get_config(self):
        return {"name": self.name, "rate": self.rate, "seed": self.seed,
                "noise_shape": None if self.noise_shape is None else list(self.noise_shape)}


class SpatialDropout1D(Layer):
    """`keras.layers.SpatialDropout1D(rate)`: drops whole channels of (B, steps, C)."""

    rank = 1
    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, rate: float, seed=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate(self, rate)
        self.seed = seed
        self.data_format = data_format or "channels_last"
        if self.rank == 1 and data_format is not None:  # as Keras: (batch, steps, channels)
            raise TypeError(f"SpatialDropout1D {self.name!r} takes no data_format (its "
                            "inputs are (batch, steps, channels)); drop it")
        if self.data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"{type(self).__name__} {self.name!r}: data_format must be "
                             f"'channels_last' or 'channels_first', got {data_format!r}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank "
                             f"{self.rank + 2}, got shape (None, "
                             f"{', '.join(map(str, input_shape))})")
        return input_shape

    def call(self, x):
        if not self.training or self.rate == 0.0:
            return x
        # one draw per sample and channel, shared over the spatial axes
        if self.data_format == "channels_last":
            shape = (x.shape[0], *([1] * self.rank), x.shape[-1])
        else:
            shape = (x.shape[0], x.shape[1], *([1] * self.rank))
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate)

    def get_config(self):
        config = {"name": self.name, "rate": self.rate, "seed": self.seed}
        return config if self.rank == 1 else {**config, "data_format": self.data_format}


class SpatialDropout2D(SpatialDropout1D):
    """`keras.layers.SpatialDropout2D(rate, data_format=None)`: drops whole channels of
    (B, H, W, C) (channels_first: (B, C, H, W))."""

    rank = 2


class SpatialDropout3D(SpatialDropout1D):
    """`keras.layers.SpatialDropout3D(rate, data_format=None)`: drops whole channels of
    (B, D, H, W, C) (channels_first: (B, C, D, H, W))."""

    rank = 3
