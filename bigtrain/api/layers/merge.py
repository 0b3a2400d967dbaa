"""Merge layers that take a list of tensors: Concatenate and Add."""
from __future__ import annotations

import torch

from bigtrain.api.layers.base import Layer


class Concatenate(Layer):
    """`keras.layers.Concatenate(axis=-1)([a, b, ...])`."""

    refuses_mask = True  # Keras merges the inputs' masks

    takes_list = True

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def compute_output_shape(self, input_shapes):
        rank = len(input_shapes[0])
        axis = self.axis % rank if self.axis < 0 else self.axis - 1  # shapes exclude batch
        rest = [tuple(s[:axis]) + tuple(s[axis + 1:]) for s in input_shapes]
        if len(set(rest)) != 1:
            raise ValueError(f"Concatenate needs equal shapes except on axis {self.axis}, got "
                             f"{[tuple(s) for s in input_shapes]}")
        out = list(input_shapes[0])
        out[axis] = sum(s[axis] for s in input_shapes)
        return tuple(out)

    def call(self, tensors):
        return torch.cat(list(tensors), dim=self.axis)

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


class Add(Layer):
    """`keras.layers.Add()([a, b, ...])`: element-wise sum of same-shaped tensors."""

    refuses_mask = True  # Keras merges the inputs' masks

    takes_list = True

    def compute_output_shape(self, input_shapes):
        if len({tuple(s) for s in input_shapes}) != 1:
            raise ValueError(f"Add needs inputs of one shape, got {[tuple(s) for s in input_shapes]}")
        return tuple(input_shapes[0])

    def call(self, tensors):
        out = tensors[0]
        for t in tensors[1:]:
            out = out + t
        return out
