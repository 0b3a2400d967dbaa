"""Preprocessing layers with Keras's arguments: Rescaling, Normalization (with `adapt`),
Lambda (a torch callable) and Masking. The noise layers are in `noise.py`."""
from __future__ import annotations

import numpy as np
import torch

from bigtrain.api.layers.base import Layer


def _fmt(shape) -> str:
    return "(None, " + ", ".join(map(str, shape)) + ")"


class Rescaling(Layer):
    """`keras.layers.Rescaling(scale, offset=0.0)`: x * scale + offset (e.g. 1/255 for pixels).

    `scale` and `offset` may be numbers or arrays broadcast against the input as numpy
    does, e.g. one scale per channel: `Rescaling([1 / 58.4, 1 / 57.1, 1 / 57.4])`. They are
    constants, not weights (as in Keras).
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = self._constant(scale), self._constant(offset)
        # arrays as non-persistent buffers: they follow .to(device), and are no weights
        for key in ("scale", "offset"):
            value = getattr(self, key)
            if isinstance(value, np.ndarray):
                delattr(self, key)
                self.register_buffer(key, torch.as_tensor(value), persistent=False)

    @staticmethod
    def _constant(value):
        array = np.asarray(value, dtype="float32")
        return float(array) if array.ndim == 0 else array

    def compute_output_shape(self, input_shape):
        full = (1, *input_shape)
        for value in (self.scale, self.offset):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
            try:
                fits = np.broadcast_shapes(full, shape) == full
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"Rescaling {self.name!r}: a scale or offset of shape {shape} "
                                 f"does not broadcast over inputs of shape {_fmt(input_shape)}")
        return input_shape

    def call(self, x):
        return x * self._like(self.scale, x) + self._like(self.offset, x)

    @staticmethod
    def _like(value, x):
        """An array constant in a float input's dtype (bf16 stays bf16); ints become float."""
        if isinstance(value, torch.Tensor) and x.is_floating_point():
            return value.to(x.dtype)
        return value

    def get_config(self):
        def plain(value):
            return value.tolist() if isinstance(value, torch.Tensor) else value
        return {"name": self.name, "scale": plain(self.scale), "offset": plain(self.offset)}


class Normalization(Layer):
    """`keras.layers.Normalization(axis=-1)`: (x - mean) / sqrt(variance) per feature.

    `axis` (counted with the batch axis, as Keras) is the axis or axes that keep their own
    statistics: -1 one mean per feature, (1, 2) one per cell of a (None, H, W) input, None
    one mean for everything. The statistics come from `adapt(data)` (over every other axis)
    or from `mean=` and `variance=`. Adapted statistics are non-trainable weights, listed as
    Keras does: mean, variance and a count (which Keras 3 keeps at 0); given ones are
    constants, not weights (as in Keras).

    Example:
        norm = Normalization()
        norm.adapt(x_train)
        model = Sequential([Input(shape=(8,)), norm, Dense(1)])
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, axis=-1, mean=None, variance=None, invert: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.axis = () if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)
        self.invert = bool(invert)
        if (mean is None) != (variance is None):
            raise ValueError("Normalization takes both mean= and variance=, or neither "
                             "(then call adapt(data))")
        self._given = None if mean is None else (np.asarray(mean, "float32"),
                                                 np.asarray(variance, "float32"))
        if self._given is not None and (self._given[0].shape != self._given[1].shape or
                                        self._given[0].ndim > len(self.axis)):
            raise ValueError(f"Normalization {self.name!r}: mean and variance must have one "
                             f"shape, of at most one axis per kept axis (axis={axis}); got "
                             f"{self._given[0].shape} and {self._given[1].shape}")
        self._adapted = None

    def _kept_axes(self, rank: int) -> tuple[int, ...]:
        """The axes with their own statistics, counted with the batch axis (rank + 1 axes)."""
        kept = sorted(a + rank + 1 if a < 0 else a for a in self.axis)
        if any(not 1 <= a <= rank for a in kept):
            raise ValueError(f"Normalization {self.name!r}: axis={self.axis} is not a set of "
                             f"feature axes of inputs with {rank} axes after the batch (the "
                             "batch axis 0 cannot keep its own statistics)")
        return tuple(kept)

    def _shapes(self, input_shape):
        """(statistics' shape, their broadcast shape against a batch)."""
        kept = self._kept_axes(len(input_shape))
        full = (1, *input_shape)
        return (tuple(full[a] for a in kept),
                [full[a] if a in kept else 1 for a in range(len(full))])

    def adapt(self, data) -> None:
        """Compute the mean and variance of `data` (numpy or tensor, batch first)."""
        if self._given is not None:
            raise ValueError(f"Normalization {self.name!r} was given mean= and variance=; "
                             "adapt() would replace them: pass one or the other")
        data = np.asarray(data, dtype="float64")
        kept = self._kept_axes(data.ndim - 1)
        reduce = tuple(i for i in range(data.ndim) if i not in kept)
        self._adapted = (data.mean(reduce), data.var(reduce))
        if self.built:
            self._load(*self._adapted)

    def build(self, input_shape):
        stats_shape, self._bshape = self._shapes(input_shape)
        if self._given is not None:  # constants, as Keras: no weights
            mean, variance = (self._place_given(v, input_shape, stats_shape)
                              for v in self._given)
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("variance", variance, persistent=False)
            return
        # buffers, not parameters: no `trainable = True` (of the layer or the model) may
        # ever hand them to the optimizer, as Keras never trains them
        self.register_buffer("mean", torch.zeros(stats_shape))
        self.register_buffer("variance", torch.ones(stats_shape))
        self.register_buffer("count", torch.zeros(()))
        if self._adapted is not None:
            self._load(*self._adapted)

    def _place_given(self, value: np.ndarray, input_shape, stats_shape) -> torch.Tensor:
        """A given mean or variance broadcast to the statistics' shape: its axes stand for
        the last kept axes (Keras's rule), a scalar for all of them."""
        kept = self._kept_axes(len(input_shape))
        full = [1] * (len(input_shape) + 1)
        for i in range(1, value.ndim + 1):
            full[kept[-i]] = value.shape[-i]
        try:
            placed = np.broadcast_to(value.reshape(full), self._bshape)
        except ValueError:
            raise ValueError(f"Normalization {self.name!r}: mean/variance of shape "
                             f"{value.shape} do not fit inputs of shape {_fmt(input_shape)} "
                             f"with axis={self.axis}") from None
        return torch.as_tensor(np.array(placed.reshape(stats_shape)))

    def _load(self, mean, variance):
        def to_tensor(values, like):
            return torch.as_tensor(np.array(np.broadcast_to(values, like.shape), "float32"))

        with torch.no_grad():
            self.mean.copy_(to_tensor(mean, self.mean))
            self.variance.copy_(to_tensor(variance, self.variance))
            self.count.fill_(0.0)  # Keras 3 leaves the count at 0

    def keras_weights(self):
        if self._given is not None:
            return []
        return [(key, _same, _same) for key in ("mean", "variance", "count")]

    def call(self, x):
        mean, var = self.mean.view(self._bshape), self.variance.view(self._bshape)
        std = var.sqrt().clamp_min(1e-7)  # Keras's epsilon
        return x * std + mean if self.invert else (x - mean) / std

    def get_config(self):
        axis = None if not self.axis else self.axis[0] if len(self.axis) == 1 else list(self.axis)
        config = {"name": self.name, "axis": axis, "invert": self.invert}
        if self._given is not None:
            config.update(mean=self._given[0].tolist(), variance=self._given[1].tolist())
        return config


def _same(t):
    return t


class Lambda(Layer):
    """`keras.layers.Lambda(function)`: wraps a torch callable as a layer.

    The output shape is found by running `function` on a zero batch unless `output_shape` is
    given. A Lambda cannot be saved with `Model.save` (storing a Python callable would need
    pickle); use `save_weights`, or write a `Layer` subclass.

    Called on a list of tensors, `function` gets the list, as in Keras; `arguments` are
    keyword arguments handed to every call of `function`.

    Example:
        h = Lambda(lambda t: t * 2.0)(Input(shape=(4,)))
        s = Lambda(lambda ab, k: (ab[0] - ab[1]) * k, arguments={"k": 0.5})([h, h])
    """

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda takes a callable, got {type(function).__name__}")
        if mask is not None:
            raise ValueError(f"Lambda {self.name!r}: mask= is not supported (bigtrain's masks "
                             "come from Embedding(mask_zero=True) or Masking); drop it")
        self.function, self.arguments = function, dict(arguments or {})
        # a callable maps Keras's whole input shape (batch axis first) to the output's
        self.output_shape = output_shape if output_shape is None or callable(output_shape) \
            else tuple(output_shape)

    def __call__(self, *args, **kwargs):
        if args and isinstance(args[0], (list, tuple)):
            self.takes_list = True  # Keras hands `function` the whole list
        return super().__call__(*args, **kwargs)

    def compute_output_shape(self, input_shape):
        shapes = input_shape if self.takes_list else [input_shape]
        if callable(self.output_shape):
            full = [(None, *s) for s in shapes]
            return tuple(self.output_shape(full if self.takes_list else full[0]))[1:]
        if self.output_shape is not None:
            return self.output_shape
        with torch.no_grad():
            zeros = [torch.zeros(2, *s) for s in shapes]
            return tuple(self.call(zeros if self.takes_list else zeros[0]).shape[1:])

    def call(self, x):
        return self.function(x, **self.arguments)

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
