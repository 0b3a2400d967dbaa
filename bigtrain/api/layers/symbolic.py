"""The symbolic side of the functional API: `KerasTensor` (a shape and dtype without the
batch axis), the graph `Node` a layer call records, Keras's automatic layer names, and
`train_mode` for Keras's call-time `training=`. `bigtrain.api.layers.base.Layer` makes them;
`bigtrain.api.functional` reads them.
"""
from __future__ import annotations

import contextlib
import itertools
import re
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from bigtrain.api.layers.base import Layer

_name_counters: dict[str, itertools.count] = defaultdict(itertools.count)


def _snake(name: str) -> str:
    """Keras's automatic-name rule: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def clear_session() -> None:
    """Restart automatic layer names (dense, dense_1, ...), as `keras.backend.clear_session`."""
    _name_counters.clear()


def unique_name(prefix: str) -> str:
    """Keras-style automatic names: dense, dense_1, dense_2, ..."""
    n = next(_name_counters[prefix])
    return prefix if n == 0 else f"{prefix}_{n}"


class KerasTensor:
    """A symbolic tensor: a shape without the batch axis, a dtype and the node that made it."""

    def __init__(self, shape: tuple, dtype: torch.dtype, node: "Node | None" = None, index: int = 0,
                 masked: bool = False):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.node, self.index = node, index
        self.masked = masked  # carries a Keras time-step mask (Embedding(mask_zero), Masking)

    def __repr__(self):
        origin = self.node.layer.name if self.node else "?"
        return f"<KerasTensor shape=(None, {', '.join(map(str, self.shape))}) from {origin}>"


class Node:
    """One call of a layer in the graph: the tensors it took and the ones it gave."""

    def __init__(self, layer: "Layer", inputs: list[KerasTensor], takes_list: bool,
                 kwargs: dict | None = None):
        self.layer = layer
        self.inputs = inputs
        self.takes_list = takes_list
        self.kwargs = dict(kwargs or {})  # JSON-able call options, e.g. use_causal_mask=True
        self.outputs: list[KerasTensor] = []
        #: Keras's call-time `training=` (Dropout(0.5)(x, training=True), base(x,
        #: training=False)): the layer's mode when the model is called without training=;
        #: fit, evaluate and predict set their own, as in Keras 3. None: the model's mode
        self.training: bool | None = None
        #: the call of a model inside another model's graph that made this node
        #: (bigtrain.api.functional.NestedCall), None for a layer called directly
        self.nested = None


@contextlib.contextmanager
def train_mode(module: nn.Module, mode: bool | None):
    """Within the block, `module` and its submodules run in training mode `mode` (None:
    unchanged); afterwards each has its own mode back.

    Example:
        with train_mode(layer, False):  # Keras's layer(x, training=False)
            y = layer(x)
    """
    if mode is None:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.train(mode)
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


@contextlib.contextmanager
def unsized_axes_named(layer: "Layer", input_shape):
    """Around a layer's build: torch's TypeError for a weight sized by an axis of any size
    (None), "empty(): argument 'size' ... NoneType", becomes what it means in the user's
    terms. A TypeError with no None axis in `input_shape` is something else and stands."""
    try:
        yield
    except TypeError as e:
        shapes = input_shape if input_shape and isinstance(input_shape[0], (tuple, list)) \
            else [input_shape]
        if not any(s is None for shape in shapes for s in shape):
            raise
        shown = ", ".join("(None, " + ", ".join(map(str, shape)) + ")" for shape in shapes)
        raise ValueError(f"{type(layer).__name__} {layer.name!r} sizes its weights from its "
                         f"input's axes, and inputs of shape {shown} have an axis of any "
                         "size (None) that it needs fixed: give it a size in Input(shape="
                         "...), or pool it away first (e.g. GlobalAveragePooling1D instead "
                         f"of Flatten). ({e})") from e
