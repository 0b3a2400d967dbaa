"""Keras's wrappers of other layers over time: Bidirectional (an RNN forwards and a copy
backwards) and TimeDistributed (a layer applied to every time step).
"""
from __future__ import annotations

import torch

from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.normalization import BatchNormalization
from bigtrain.api.layers.recurrent import _RNN, _layer_from


class Bidirectional(Layer):
    """`keras.layers.Bidirectional(layer, merge_mode="concat")`: the layer forwards and a copy
    backwards; their outputs (the backward one re-aligned in time) concatenated, summed,
    multiplied, averaged, or (merge_mode=None) listed: [forward, backward]. Keras weights:
    the forward layer's, then the backward layer's.
    """

    modes = ("concat", "sum", "mul", "ave", None)

    def __init__(self, layer: _RNN, merge_mode: str | None = "concat", backward_layer=None,
                 **kwargs):
        super().__init__(**kwargs)
        layer = _layer_from(layer)
        if not isinstance(layer, _RNN):
            raise TypeError(f"Bidirectional wraps SimpleRNN, LSTM or GRU, got "
                            f"{type(layer).__name__}")
        if merge_mode not in self.modes:
            raise ValueError(f"Bidirectional merge_mode must be one of {self.modes}, "
                             f"got {merge_mode!r}")
        self.forward_layer = layer
        self._given_backward = backward_layer is not None  # saved in get_config then
        if backward_layer is None:  # as Keras: a copy of the layer reading backwards
            config = {k: v for k, v in layer.get_config().items() if k != "name"}
            backward_layer = type(layer)(**{**config, "go_backwards": True},
                                         name=f"backward_{layer.name}")
        self.backward_layer = self._checked_backward(_layer_from(backward_layer))
        self.merge_mode = merge_mode
        for side in (self.forward_layer, self.backward_layer):  # as Keras: masked steps give 0
            side.zero_output_for_mask = side.return_sequences
        if merge_mode is None and layer.return_sequences:
            # Keras masks both listed outputs; a graph carries a mask on the first only
            self.refuses_mask = True

    def _checked_backward(self, backward):
        """The backward layer, checked as Keras does: an RNN reading the other way, with
        the forward layer's return_sequences and return_state (and, here, its units)."""
        forward = self.forward_layer
        if not isinstance(backward, _RNN):
            raise TypeError(f"Bidirectional {self.name!r}: backward_layer must be a SimpleRNN, "
                            f"LSTM or GRU, got {type(backward).__name__}")
        if backward.go_backwards == forward.go_backwards:
            raise ValueError(f"Bidirectional {self.name!r}: the forward and backward layers "
                             f"both have go_backwards={forward.go_backwards}; the forward "
                             "layer must read forwards (go_backwards=False) unless a "
                             "backward_layer with go_backwards=False is given")
        for attr in ("return_sequences", "return_state", "units"):
            if getattr(backward, attr) != getattr(forward, attr):
                raise ValueError(f"Bidirectional {self.name!r}: backward_layer has {attr}="
                                 f"{getattr(backward, attr)!r} but the forward layer has "
                                 f"{getattr(forward, attr)!r}; give both the same")
        return backward

    def output_mask(self, mask):
        return mask if self.forward_layer.return_sequences else None

    def compute_output_shape(self, input_shape):
        shape = self.forward_layer.compute_output_shape(input_shape)
        states = shape[1:] if self.forward_layer.return_state else None
        shape = shape[0] if states is not None else shape
        out = (*shape[:-1], 2 * shape[-1]) if self.merge_mode == "concat" else shape
        outs = [shape, shape] if self.merge_mode is None else [out]  # None: both, listed
        # return_state, as Keras: [output(s), forward states..., backward states...]
        if states is None and self.merge_mode is not None:
            return out
        return [*outs, *(states or ()), *(states or ())]

    def build(self, input_shape):
        for layer in (self.forward_layer, self.backward_layer):
            layer._ensure_built(input_shape)

    takes_mask = True

    def call(self, x, mask=None):
        mask = getattr(x, "_keras_mask", None) if mask is None else mask
        fwd, bwd = self.forward_layer(x, mask=mask), self.backward_layer(x, mask=mask)
        states = []
        if self.forward_layer.return_state:  # [y, *states] from each direction
            (fwd, *fwd_states), (bwd, *bwd_states) = fwd, bwd
            states = [*fwd_states, *bwd_states]
        if self.forward_layer.return_sequences:
            bwd = bwd.flip(1)  # step t of the backward pass read x_{T-1-t}
        if self.merge_mode is None:
            return [fwd, bwd, *states]
        out = self._merge(fwd, bwd)
        return [out, *states] if states else out

    def _merge(self, fwd, bwd):
        if self.merge_mode == "concat":
            return torch.cat([fwd, bwd], dim=-1)
        if self.merge_mode == "sum":
            return fwd + bwd
        if self.merge_mode == "mul":
            return fwd * bwd
        return (fwd + bwd) / 2

    def keras_weights(self):
        return [(f"{side}.{key}", a, b)
                for side in ("forward_layer", "backward_layer")
                for key, a, b in getattr(self, side).keras_weights()]

    def get_config(self):
        config = {"name": self.name, "merge_mode": self.merge_mode,
                  "layer": {"class": type(self.forward_layer).__name__,
                            "config": self.forward_layer.get_config()}}
        if self._given_backward:
            config["backward_layer"] = {"class": type(self.backward_layer).__name__,
                                        "config": self.backward_layer.get_config()}
        return config


class TimeDistributed(Layer):
    """`keras.layers.TimeDistributed(layer)`: applies `layer` to every step of (B, T, ...)."""

    supports_masking = True  # the time-step mask passes through, as Keras's

    def __init__(self, layer: Layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = _layer_from(layer)
        # Keras hands a layer that reads masks one step's (B,) mask at a time: refused
        self.refuses_mask = self.layer.takes_mask or self.layer.refuses_mask

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"TimeDistributed {self.name!r} expects inputs of rank >= 3 "
                             f"(batch, timesteps, ...), got (None, "
                             f"{', '.join(map(str, input_shape))})")
        return (input_shape[0], *self.layer.compute_output_shape(tuple(input_shape[1:])))

    def build(self, input_shape):
        self.layer._ensure_built(tuple(input_shape[1:]))

    def call(self, x):
        if self.training and self._batch_statistics():
            # Keras calls the layer once per step: in training, a BatchNormalization's
            # statistics are each step's (B samples), and its moving ones move T times
            return torch.stack([self.layer(x[:, i]) for i in range(x.shape[1])], 1)
        b, t = x.shape[:2]
        y = self.layer(x.reshape(b * t, *x.shape[2:]))  # every step as one batch
        return y.reshape(b, t, *y.shape[1:])

    def _batch_statistics(self) -> bool:
        """Whether the wrapped layer normalizes with its batch's statistics in training (a
        trainable BatchNormalization in it), so one (B * T) batch would differ from Keras."""
        return any(isinstance(m, BatchNormalization) and m.trainable
                   for m in self.layer.modules())

    def keras_weights(self):
        inner = self.layer.keras_weights()
        if inner is None:
            return None
        return [(f"layer.{key}", a, b) for key, a, b in inner]

    def get_config(self):
        return {"name": self.name, "layer": {"class": type(self.layer).__name__,
                                             "config": self.layer.get_config()}}
