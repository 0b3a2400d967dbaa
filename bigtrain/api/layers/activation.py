"""Keras's activation layers: ReLU, LeakyReLU, PReLU, ELU and Softmax, with Keras 3's
arguments, defaults and (PReLU) weight layout. `Activation(name)` lives in core.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api import activations
from bigtrain.api.layers.base import Layer


def _at_least_zero(layer: str, **values) -> None:
    for name, value in values.items():
        if value is None or value < 0:
            raise ValueError(f"{layer} {name} must be a number >= 0, got {value!r}")


class ReLU(Layer):
    """`keras.layers.ReLU(max_value=None, negative_slope=0.0, threshold=0.0)`:
    x above `threshold` (else 0), clipped at `max_value`, and
    negative_slope * (x - threshold) below the threshold.

    Example:
        h = ReLU(max_value=6.0)(Dense(64)(x))
    """

    supports_masking = True

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        if max_value is not None:
            _at_least_zero("ReLU", max_value=max_value)
        _at_least_zero("ReLU", negative_slope=negative_slope, threshold=threshold)
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def call(self, x):
        return activations.relu(x, self.negative_slope, self.max_value, self.threshold)

    def get_config(self):
        return {"name": self.name, "max_value": self.max_value,
                "negative_slope": self.negative_slope, "threshold": self.threshold}


class LeakyReLU(Layer):
    """`keras.layers.LeakyReLU(negative_slope=0.3)` (the layer's default; the "leaky_relu"
    activation name uses 0.2). `alpha=` is Keras 2's name for the slope."""

    supports_masking = True

    def __init__(self, negative_slope=0.3, alpha=None, **kwargs):
        super().__init__(**kwargs)
        if alpha is not None:
            negative_slope = alpha
        _at_least_zero("LeakyReLU", negative_slope=negative_slope)
        self.negative_slope = negative_slope

    def call(self, x):
        return F.leaky_relu(x, negative_slope=self.negative_slope)

    def get_config(self):
        return {"name": self.name, "negative_slope": self.negative_slope}


class ELU(Layer):
    """`keras.layers.ELU(alpha=1.0)`: x above 0, alpha * (exp(x) - 1) below."""

    supports_masking = True

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = alpha

    def call(self, x):
        return F.elu(x, self.alpha)

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}


class Softmax(Layer):
    """`keras.layers.Softmax(axis=-1)`; `axis` may be a list of axes (softmax over all of
    them together). Axes count the batch axis, as in Keras.

    A Keras call-time `mask=` is not supported: this layer refuses a masked input.
    """

    refuses_mask = True

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = list(axis) if isinstance(axis, (list, tuple)) else axis

    def call(self, x):
        if not isinstance(self.axis, list):
            return torch.softmax(x, dim=self.axis)
        if len(self.axis) == 1:
            return torch.softmax(x, dim=self.axis[0])
        return torch.exp(x - torch.logsumexp(x, dim=self.axis, keepdim=True))

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


_INITIALIZERS = {"zeros": nn.init.zeros_, "ones": nn.init.ones_}


class PReLU(Layer):
    """`keras.layers.PReLU(alpha_initializer="zeros", shared_axes=None)`:
    relu(x) - alpha * relu(-x) with a learned alpha per element of the input (without the
    batch axis), shared along `shared_axes` (Keras axis numbers, 1 = the first after the
    batch). The weight `alpha` has Keras's shape, e.g. (1, 1, C) for images with
    shared_axes=[1, 2].

    Example:
        h = PReLU(shared_axes=[1, 2])(Conv2D(16, 3)(image))
    """

    supports_masking = True

    def __init__(self, alpha_initializer="zeros", alpha_regularizer=None,
                 alpha_constraint=None, shared_axes=None, **kwargs):
        super().__init__(**kwargs)
        if alpha_regularizer is not None or alpha_constraint is not None:
            raise ValueError("PReLU alpha_regularizer and alpha_constraint are not supported "
                             "by bigtrain; leave them None")
        key = alpha_initializer.lower() if isinstance(alpha_initializer, str) else None
        if key not in _INITIALIZERS:
            raise ValueError(f"PReLU alpha_initializer must be one of {sorted(_INITIALIZERS)}, "
                             f"got {alpha_initializer!r}")
        self.alpha_initializer = key
        self.shared_axes = None if shared_axes is None else \
            list(shared_axes) if isinstance(shared_axes, (list, tuple)) else [shared_axes]

    def build(self, input_shape):
        shape = list(input_shape)
        for axis in self.shared_axes or []:
            if not 1 <= axis <= len(shape):
                raise ValueError(f"PReLU shared_axes {self.shared_axes} must be in "
                                 f"1..{len(shape)} for inputs of shape {tuple(input_shape)}")
            shape[axis - 1] = 1
        self.alpha = nn.Parameter(torch.empty(shape))
        _INITIALIZERS[self.alpha_initializer](self.alpha)

    def call(self, x):
        return F.relu(x) - self.alpha * F.relu(-x)

    def get_config(self):
        return {"name": self.name, "alpha_initializer": self.alpha_initializer,
                "shared_axes": self.shared_axes}
