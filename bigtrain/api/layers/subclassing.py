"""Keras's contract for a user's own `Layer` subclass, so that a custom layer written for
Keras runs unchanged: `self.add_weight(...)` in `build`, `build(input_shape)` and
`compute_output_shape(input_shape)` given shapes WITH the batch axis (None), `call(x,
training=None)` told the mode, an output shape found by running `call` when the class
does not say it, and `get_weights` in Keras's order (the layer's own trainable weights,
then its non-trainable ones, then its sublayers').

bigtrain's own layers keep their shapes without the batch axis: the Keras convention
applies to a method only where a class outside bigtrain defines it.

Example:
    class Linear(Layer):
        def build(self, input_shape):  # (None, features)
            self.w = self.add_weight(shape=(input_shape[-1], 4), initializer="random_normal")
        def call(self, x):
            return x @ self.w
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from bigtrain.api import initializers as keras_initializers
from bigtrain.api.layers.weight_options import WeightOptions


def _definer(layer_cls: type, method: str) -> type | None:
    """The class of `layer_cls`'s MRO that defines `method`."""
    return next((k for k in layer_cls.__mro__ if method in vars(k)), None)


def _own(layer_cls: type, method: str) -> bool:
    """Whether `method` of `layer_cls` is defined by a class outside bigtrain (a user's)."""
    klass = _definer(layer_cls, method)
    return klass is not None and not klass.__module__.startswith("bigtrain.")


@functools.cache
def keras_convention(layer_cls: type, method: str) -> bool:
    """`method` ("build", "compute_output_shape") is the user's: it takes and gives shapes
    with the batch axis, as Keras's."""
    return _own(layer_cls, method)


@functools.cache
def infers_output_shape(layer_cls: type) -> bool:
    """A user's layer class whose output shape nothing says (compute_output_shape is the
    base Layer's): found by running its `call`, as Keras traces it."""
    definer = _definer(layer_cls, "compute_output_shape")
    return _own(layer_cls, "call") and definer is not None and \
        definer.__module__ == "bigtrain.api.layers.base"


@functools.cache
def call_takes_training(layer_cls: type) -> bool:
    """A user's `call(self, x, training=None)`: it is told the mode, as Keras tells it."""
    return _own(layer_cls, "call") and \
        "training" in inspect.signature(layer_cls.call).parameters


def with_batch(shape):
    """A shape without the batch axis -> Keras's, with None first (a list of them too)."""
    return [with_batch(s) for s in shape] if isinstance(shape, list) else (None, *shape)


def without_batch(shape):
    """A Keras shape (batch axis first) -> bigtrain's."""
    if isinstance(shape, list) and shape and isinstance(shape[0], (tuple, list)):
        return [without_batch(s) for s in shape]
    return tuple(shape)[1:]


def add_weight(layer, shape=None, initializer=None, dtype=None, trainable=True,
               regularizer=None, constraint=None, name=None) -> torch.Tensor:
    """Keras's `add_weight`: a new weight of `shape` (without any batch axis) filled by
    `initializer` (Keras's default: glorot_uniform), trainable or not. A trainable weight
    is an `nn.Parameter`, a non-trainable one a buffer; both are listed by get_weights in
    Keras's order and saved with the model. A trainable weight's `regularizer` and
    `constraint` act as a built-in layer's kernel_regularizer/kernel_constraint (the
    penalty joins the loss, the constraint projects the weight after each step); Keras
    leaves both unused on a non-trainable weight, and so does bigtrain."""
    kind = f"{type(layer).__name__} {layer.name!r}"
    if dtype not in (None, "float32", torch.float32):
        raise ValueError(f"{kind}: add_weight(dtype={dtype!r}) is not supported: bigtrain's "
                         "weights are float32; drop dtype=")
    shape = () if shape is None else tuple(shape)
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"{kind}: add_weight(shape={shape}) needs sizes that are integers "
                         "(no None: a weight's shape is fixed when it is built)")
    init = keras_initializers.get("glorot_uniform" if initializer is None else initializer)
    value = init(shape).to(torch.float32)
    weight = nn.Parameter(value) if trainable else value
    name = name or "variable"
    opts = WeightOptions("glorot_uniform", None, regularizer, constraint)
    if trainable and (opts.regularizer is not None or opts.constraint is not None):
        n, role = 0, name  # its role in weight_options (weight_roles): one per weight
        while role in layer.weight_options:
            n += 1
            role = f"{name}_{n}"
        layer.weight_options[role] = opts
        name = role
    layer.__dict__.setdefault("_added_weights", []).append((weight, bool(trainable), name))
    return weight


def register_added(layer) -> None:
    """Give every weight `add_weight` made a place in the module, under the attribute it was
    assigned to (`self.w = self.add_weight(...)`) or, kept elsewhere, under its name."""
    for weight, trainable, name in layer.__dict__.get("_added_weights", ()):
        if _key_of(layer, weight) is not None:
            continue
        key, n = name, 0
        while key in layer._parameters or key in layer._buffers or key in layer.__dict__ \
                or key in layer._modules:
            n += 1
            key = f"{name}_{n}"
        if trainable:
            layer.register_parameter(key, weight)
        else:
            layer.register_buffer(key, weight)


def is_added_buffer(layer, value) -> bool:
    """`value` is a non-trainable weight of `layer`'s add_weight (assigned as an attribute,
    it becomes a buffer of that name)."""
    return isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and any(
        w is value for w, trainable, _ in layer.__dict__.get("_added_weights", ())
        if not trainable)


def added_names(layer) -> dict[str, str]:
    """{the name given to add_weight: the weight's state key} (Keras's weight names)."""
    out = {}
    for weight, _, name in layer.__dict__.get("_added_weights", ()):
        key = _key_of(layer, weight)
        if key is not None:
            out.setdefault(name, key)
    return out


def _key_of(layer, tensor) -> str | None:
    for key, t in [*layer._parameters.items(), *layer._buffers.items()]:
        if t is tensor:
            return key
    return None


def _same(t):
    return t


def keras_slots(layer, layer_class: type) -> list:
    """(state key, torch->Keras, Keras->torch) of `layer`'s weights in Keras's order: its
    add_weight weights (trainable ones first, each group in the order made), its other
    parameters and buffers, then each sublayer's own slots (a `layer_class`'s
    `weight_slots`) under its attribute name."""
    added = layer.__dict__.get("_added_weights", ())
    first = [_key_of(layer, w) for w, trainable, _ in added if trainable] + \
        [_key_of(layer, w) for w, trainable, _ in added if not trainable]
    slots = [(key, _same, _same) for key in first if key is not None]
    taken, saved = set(first), layer.state_dict(keep_vars=True)
    for key, t in [*layer._parameters.items(), *layer._buffers.items()]:
        if t is not None and key not in taken and key in saved:
            slots.append((key, _same, _same))
    for child_name, child in layer.named_children():
        if isinstance(child, layer_class):
            slots += [(f"{child_name}.{key}", a, b) for key, a, b in child.weight_slots()]
        else:
            slots += [(f"{child_name}.{key}", _same, _same) for key in child.state_dict()
                      if not key.endswith("num_batches_tracked")]
    return slots


@torch.no_grad()
def run_for_shape(layer, shape, dtype: torch.dtype):
    """The output shape(s) of `layer` found by calling it on a zero batch of 2 in inference
    mode (a user's layer that does not define compute_output_shape, as Keras traces call)."""
    def zeros(s):
        if None in s:
            raise ValueError(f"{type(layer).__name__} {layer.name!r} does not define "
                             "compute_output_shape, and its input has an axis of any size "
                             f"{with_batch(s)}; define compute_output_shape(input_shape)")
        return torch.zeros(2, *s, dtype=dtype)

    x = [zeros(s) for s in shape] if isinstance(shape, list) else zeros(shape)
    modes = [(m, m.training) for m in layer.modules()]
    layer.eval()  # as Keras traces it: no dropout draws, no moving statistics
    try:
        out = layer.forward(x)
    finally:
        for m, was in modes:
            m.training = was
    if isinstance(out, (list, tuple)):
        return [tuple(o.shape[1:]) for o in out]
    return tuple(out.shape[1:])
