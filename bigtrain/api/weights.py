"""Keras-order weight lists (`get_weights`/`set_weights`), so weights move between Keras
and bigtrain: per layer in Keras's layer order, a Dense kernel shaped (inputs, units) then its
bias; Embedding's table; LayerNormalization's gamma, beta; BatchNormalization's gamma,
beta, moving mean, moving variance; a Conv2D kernel (kh, kw, in, out). Each layer declares
its layout in `Layer.keras_weights`. A plain torch module lists its state dict in order
(parameters and buffers, without BatchNorm's step counter), untransposed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bigtrain.api.functional import GraphModule


def _same(t):
    return t


# (full state-dict key, torch->Keras, Keras->torch) per weight
Slot = tuple[str, Callable, Callable]


def weight_slots(net) -> list[Slot]:
    """(full state-dict key, torch->Keras, Keras->torch) for each Keras weight, in Keras order:
    a graph's layers in Keras's order of `model.layers` (by depth, see
    bigtrain.api.functional.keras_order), each layer's in its `Layer.weight_slots` order."""
    if isinstance(net, GraphModule):
        names = {id(layer): name for name, layer in net.layers.items()}
        return [(f"layers.{names[id(layer)]}.{key}", to_k, to_t)
                for layer in net.weight_layers() for key, to_k, to_t in layer.weight_slots()]
    return [(k, _same, _same) for k in net.state_dict() if not k.endswith("num_batches_tracked")]


def get_weights(net, state: dict[str, torch.Tensor]) -> list[np.ndarray]:
    return [as_numpy(to_keras(state[key].detach().cpu())) for key, to_keras, _ in weight_slots(net)]


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a numpy copy; bfloat16, which numpy lacks ("Got unsupported
    ScalarType BFloat16"), as float32, which holds every bf16 value exactly."""
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


def set_weights(net, values: list, live=None) -> None:
    slots = weight_slots(net)
    if len(values) != len(slots):
        raise ValueError(f"set_weights got {len(values)} arrays but the model has "
                         f"{len(slots)} weights ({', '.join(k for k, _, _ in slots[:6])}...)")
    current = net.state_dict()
    new = {}
    for (key, to_keras, to_torch), value in zip(slots, values):
        want = tuple(to_keras(current[key]).shape)
        if tuple(np.shape(value)) != want:
            raise ValueError(f"weight {key!r} expects shape {want}, got {tuple(np.shape(value))}")
        t = to_torch(torch.as_tensor(np.asarray(value)))
        new[key] = t.to(current[key].dtype).contiguous()
    if live is not None:
        strategy, module = live
        state = strategy.full_state_dict(module)
        state.update(new)
        strategy.load_full_state_dict(module, state)
    else:
        net.load_state_dict(new, strict=False)
