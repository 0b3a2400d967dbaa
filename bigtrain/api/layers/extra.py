"""Small Keras layers: Identity, UnitNormalization and RMSNormalization, with Keras 3's
arguments, defaults and (RMSNormalization) weight layout."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.normalization import as_float


def _fmt(shape) -> str:
    return "(None, " + ", ".join(map(str, shape)) + ")"


def _axes(layer: Layer, axis, input_shape) -> list[int]:
    """`axis` (an int or a list, counted with the batch axis, as Keras) as sorted positive
    axes of a (batch, *input_shape) tensor; the batch axis is refused."""
    rank = len(input_shape) + 1
    given = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    full = sorted(a + rank if a < 0 else a for a in given)
    if not given or any(not 1 <= a < rank for a in full):
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: axis={axis} is not a set of "
                         f"axes after the batch axis of inputs of shape {_fmt(input_shape)}")
    return full


class Identity(Layer):
    """`keras.layers.Identity()`: returns its input (and its time-step mask) unchanged."""

    supports_masking = True

    def call(self, x):
        return x


class UnitNormalization(Layer):
    """`keras.layers.UnitNormalization(axis=-1)`: x / max(||x||_2, 1e-12) over `axis` (an
    int or a list of axes, counted with the batch axis).

    Example:
        h = UnitNormalization()(Dense(16)(Input(shape=(8,))))
    """

    supports_masking = True

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = list(axis) if isinstance(axis, (list, tuple)) else axis

    def build(self, input_shape):
        self._dims = _axes(self, self.axis, input_shape)

    def call(self, x):
        norm = x.square().sum(self._dims, keepdim=True).sqrt()
        return x / norm.clamp_min(1e-12)  # Keras's ops.normalize(order=2, epsilon=1e-12)

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


class RMSNormalization(Layer):
    """`keras.layers.RMSNormalization(axis=-1, epsilon=1e-6)`: x / sqrt(mean(x^2) + epsilon)
    over the last axis (or the last few), times a learned `scale` of their shape (Keras's
    one weight), as torch's fused `rms_norm`.

    Example:
        h = RMSNormalization()(Dense(64)(Input(shape=(16, 32))))

    A time-step mask ends here, as Keras's RMSNormalization drops it.
    """

    def __init__(self, axis=-1, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.axis = list(axis) if isinstance(axis, (list, tuple)) else axis
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        dims = _axes(self, self.axis, input_shape)
        rank = len(input_shape) + 1
        if dims != list(range(rank - len(dims), rank)):
            raise ValueError(f"RMSNormalization {self.name!r}: axis={self.axis} is not "
                             "supported; bigtrain normalizes over the last axes (-1, or e.g. "
                             "[-2, -1]); Permute the axes to normalize to the end first")
        self._shape = tuple(input_shape[d - 1] for d in dims)
        self.scale = nn.Parameter(torch.ones(self._shape))

    def call(self, x):
        return F.rms_norm(as_float(x, self), self._shape, self.scale, self.epsilon)

    def get_config(self):
        return {"name": self.name, "axis": self.axis, "epsilon": self.epsilon}
