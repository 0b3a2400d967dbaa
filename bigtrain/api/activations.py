"""Activation functions by Keras name, so `Dense(10, activation="softmax")` ports as is."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """Keras's "leaky_relu" activation: slope 0.2 below zero (torch's default is 0.01; the
    LeakyReLU layer's default, 0.3, differs again)."""
    return F.leaky_relu(x, negative_slope=0.2)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "silu": F.silu,
    "swish": F.silu,
    "leaky_relu": leaky_relu,
}


def get_activation(activation) -> tuple[str | None, Callable[[torch.Tensor], torch.Tensor]]:
    """(name or None for a callable, function) for a Keras activation name or a callable.

    Example:
        name, fn = get_activation("relu")
    """
    if activation is None:
        return "linear", ACTIVATIONS["linear"]
    if callable(activation):
        return None, activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return activation, ACTIVATIONS[activation]
    raise ValueError(f"unknown activation {activation!r}; valid names: "
                     f"{', '.join(sorted(ACTIVATIONS))}, or pass a callable")
