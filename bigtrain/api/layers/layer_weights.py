"""A layer's weights as Keras lists them: `get_weights`/`set_weights` in Keras's order and
layouts, and the initializer/regularizer/constraint options of each weight role.

A layer whose torch layout differs from Keras's (a conv kernel's axis order) says so in
`keras_weights`; every other one lists its state dict in order, and a user's own layer
lists its weights as Keras does (bigtrain.api.layers.subclassing).

Example:
    kernel, bias = model.get_layer("dense").get_weights()    # (inputs, units), (units,)
    model.get_layer("dense").set_weights([kernel * 0.5, bias])
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bigtrain.api import regularizers as keras_regularizers
from bigtrain.api.layers import subclassing
from bigtrain.api.layers.weight_options import WeightOptions


def _same(t):
    return t


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a numpy copy; bfloat16 (numpy has none) as float32, which holds it."""
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


class LayerWeights:
    """Mixed into `Layer` (bigtrain.api.layers.base): its weights in Keras's order and
    layout, and the options (`weight_options`, role -> WeightOptions) set on them."""

    def keras_weights(self) -> list[tuple[str, Callable, Callable]] | None:
        """This layer's weights in Keras's order and layout, or None for its state dict as is.

        Returns (state-dict key inside the layer, torch->Keras, Keras->torch) per weight; the
        two callables convert one tensor's layout (e.g. a conv kernel's axis order).
        """
        return None

    def weight_slots(self) -> list[tuple[str, Callable, Callable]]:
        """`keras_weights()`, or for a layer without a Keras layout its state dict in order
        (parameters and buffers, without BatchNorm's step counter), untransposed."""
        custom = self.keras_weights()
        if custom is not None:
            return custom
        if not type(self).__module__.startswith("bigtrain."):  # a user's layer: Keras's order
            return subclassing.keras_slots(self, LayerWeights)
        return [(key, _same, _same) for key in self.state_dict()
                if not key.endswith("num_batches_tracked")]

    def get_weights(self) -> list[np.ndarray]:
        """This layer's weights as Keras's `layer.get_weights()` lists them: a Dense kernel
        (inputs, units) then its bias; BatchNormalization's gamma, beta, moving mean and
        variance.

        Example:
            kernel, bias = model.get_layer("dense").get_weights()
        """
        state = self.state_dict()
        return [_numpy(to_keras(state[key].detach().cpu()))
                for key, to_keras, _ in self.weight_slots()]

    def set_weights(self, values: list) -> None:
        """Write `values` (Keras's order, layouts and shapes, as `get_weights` gives them)
        into this layer's weights."""
        slots = self.weight_slots()
        if len(values) != len(slots):
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) has {len(slots)} "
                             f"weights, set_weights got {len(values)} arrays")
        state = self.state_dict(keep_vars=True)
        new = []
        for (key, to_keras, to_torch), value in zip(slots, values):
            want = tuple(to_keras(state[key].detach()).shape)
            if tuple(np.shape(value)) != want:
                raise ValueError(f"layer {self.name!r}: weight {key!r} expects shape {want}, "
                                 f"got {tuple(np.shape(value))}")
            new.append((state[key], to_torch(torch.as_tensor(np.asarray(value)))))
        with torch.no_grad():  # every shape checked first: a refusal changes nothing
            for tensor, value in new:
                tensor.copy_(value.to(tensor.dtype))

    def weight_roles(self) -> dict[str, str]:
        """Keras weight role ("kernel", "bias", ...) -> its state-dict key in this layer,
        for the roles in `weight_options` (the weights regularizers and constraints read);
        a layer of the user's: the names its add_weight weights were given."""
        return subclassing.added_names(self)

    def weight_options_config(self) -> dict:
        """The initializer/regularizer/constraint arguments of every weight (get_config)."""
        reg = self.activity_regularizer
        out = {} if reg is None else {"activity_regularizer": keras_regularizers.serialize(reg)}
        for role, opts in self.weight_options.items():
            out.update(opts.config(role))
        return out

    def constrained_weights(self) -> list[tuple[str, Callable, Callable, WeightOptions]]:
        """(state key, torch->Keras, Keras->torch, options) of each weight that has a
        regularizer or a constraint."""
        slots = {key: (to_keras, to_torch) for key, to_keras, to_torch in
                 (self.keras_weights() or [])}
        out = []
        for role, key in self.weight_roles().items():
            opts = self.weight_options.get(role)
            if opts is not None and (opts.regularizer or opts.constraint):
                to_keras, to_torch = slots.get(key, (None, None))
                out.append((key, to_keras, to_torch, opts))
        return out
