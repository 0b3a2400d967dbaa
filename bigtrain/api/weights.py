"""Keras-order weight lists (`get_weights`/`set_weights`), so weights move between Keras
and bigtrain: per layer in graph order, a Dense kernel shaped (inputs, units) then its
bias; Embedding's table; LayerNormalization's gamma, beta; BatchNormalization's gamma,
beta, moving mean, moving variance. A plain torch module lists its state dict in order
(parameters and buffers, without BatchNorm's step counter), untransposed.
"""
from __future__ import annotations

import numpy as np
import torch

from bigtrain.api.functional import GraphModule
from bigtrain.api.layers.core import BatchNormalization, Dense, Embedding, LayerNormalization

# layer class -> (state-dict suffix, transpose to Keras layout)
_KERAS_ORDER = {
    Dense: [("linear.weight", True), ("linear.bias", False)],
    Embedding: [("embedding.weight", False)],
    LayerNormalization: [("norm.weight", False), ("norm.bias", False)],
    BatchNormalization: [("norm.weight", False), ("norm.bias", False),
                         ("norm.running_mean", False), ("norm.running_var", False)],
}


def weight_slots(net) -> list[tuple[str, bool]]:
    """(full state-dict key, transposed) for each Keras weight, in Keras order."""
    if isinstance(net, GraphModule):
        slots = []
        for name, layer in net.layers.items():
            for suffix, transpose in _KERAS_ORDER.get(type(layer), []):
                key = f"layers.{name}.{suffix}"
                if key in net.state_dict():
                    slots.append((key, transpose))
            if type(layer) not in _KERAS_ORDER:
                for key in layer.state_dict():  # a user module inside the graph
                    if not key.endswith("num_batches_tracked"):
                        slots.append((f"layers.{name}.{key}", False))
        return slots
    return [(k, False) for k in net.state_dict() if not k.endswith("num_batches_tracked")]


def get_weights(net, state: dict[str, torch.Tensor]) -> list[np.ndarray]:
    out = []
    for key, transpose in weight_slots(net):
        t = state[key].detach().cpu()
        out.append((t.T if transpose else t).numpy().copy())
    return out


def set_weights(net, values: list, live=None) -> None:
    slots = weight_slots(net)
    if len(values) != len(slots):
        raise ValueError(f"set_weights got {len(values)} arrays but the model has "
                         f"{len(slots)} weights ({', '.join(k for k, _ in slots[:6])}...)")
    current = net.state_dict()
    new = {}
    for (key, transpose), value in zip(slots, values):
        t = torch.as_tensor(np.asarray(value))
        t = t.T if transpose else t
        if tuple(t.shape) != tuple(current[key].shape):
            want = tuple(current[key].shape)
            want = want[::-1] if transpose else want
            raise ValueError(f"weight {key!r} expects shape {want}, got {tuple(np.shape(value))}")
        new[key] = t.to(current[key].dtype)
    if live is not None:
        strategy, module = live
        state = strategy.full_state_dict(module)
        state.update(new)
        strategy.load_full_state_dict(module, state)
    else:
        net.load_state_dict(new, strict=False)
