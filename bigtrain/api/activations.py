"""Activation functions by Keras name, so `Dense(10, activation="softmax")` ports as is.

Each computes what Keras 3 computes on its torch backend (same torch op, or Keras's own
formula where Keras writes one out), with Keras's default arguments.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """Keras's "leaky_relu" activation: slope 0.2 below zero (torch's default is 0.01; the
    LeakyReLU layer's default, 0.3, differs again)."""
    return F.leaky_relu(x, negative_slope=0.2)


def relu(x: torch.Tensor, negative_slope: float = 0.0, max_value: float | None = None,
         threshold: float = 0.0) -> torch.Tensor:
    """`keras.activations.relu` with its options, in Keras's order of operations:
    x above `threshold` (else 0), clipped at `max_value`, minus
    negative_slope * relu(threshold - x)."""
    if negative_slope != 0.0 and max_value is None and threshold == 0:
        return F.leaky_relu(x, negative_slope=negative_slope)
    negative = F.relu(threshold - x) if negative_slope != 0.0 else None
    if threshold != 0:
        x = torch.where(x > threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))
    elif max_value == 6:
        x, max_value = F.relu6(x), None
    else:
        x = F.relu(x)
    if max_value is not None:
        x = torch.clamp(x, 0.0, max_value)
    if negative is not None:
        x = x - negative_slope * negative
    return x


def sparse_plus(x: torch.Tensor) -> torch.Tensor:
    """0 below -1, (x + 1)^2 / 4 on (-1, 1), x above."""
    return torch.where(x <= -1, torch.zeros_like(x),
                       torch.where(x < 1, 0.25 * (x + 1) ** 2, x))


def sparse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """0 below -1, (x + 1) / 2 on (-1, 1), 1 above."""
    return torch.clamp(0.5 * (x + 1), 0.0, 1.0)


def squareplus(x: torch.Tensor, b: float = 4.0) -> torch.Tensor:
    return (x + torch.sqrt(x * x + b)) / 2


def mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))  # Keras's formula (torch's F.mish fuses it)


def sparsemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection of `x` onto the probability simplex along `dim` (Keras's
    sort-and-threshold algorithm)."""
    ordered, _ = torch.sort(x, dim=dim, descending=True)
    cumsum = torch.cumsum(ordered, dim=dim)
    shape = [1] * x.ndim
    shape[dim] = -1
    r = torch.arange(1, x.shape[dim] + 1, device=x.device, dtype=x.dtype).view(shape)
    support = ordered - (cumsum - 1) / r > 0
    k = support.sum(dim=dim, keepdim=True)
    tau = (torch.where(support, cumsum, torch.zeros_like(cumsum)).sum(dim=dim, keepdim=True)
           - 1) / k
    return torch.clamp(x - tau, min=0.0)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "gelu": F.gelu,  # Keras 3's default is the exact (erf) form, as torch's
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,  # relu6(x + 3) / 6
    "hard_silu": F.hardswish,
    "hard_swish": F.hardswish,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=-1),
    "sparsemax": sparsemax,
    "elu": F.elu,
    "selu": F.selu,
    "celu": F.celu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "silu": F.silu,
    "swish": F.silu,
    "mish": mish,
    "leaky_relu": leaky_relu,
    "exponential": torch.exp,
    "glu": lambda x: F.glu(x, dim=-1),  # halves the last axis
    "log_sigmoid": F.logsigmoid,
    "sparse_plus": sparse_plus,
    "sparse_sigmoid": sparse_sigmoid,
    "squareplus": squareplus,
    "tanh_shrink": F.tanhshrink,
    "hard_tanh": F.hardtanh,
    "soft_shrink": F.softshrink,  # threshold 0.5
    "hard_shrink": F.hardshrink,  # threshold 0.5
}

#: Activations that change the shape: "glu" halves the last axis.
HALVES_LAST_AXIS = frozenset({"glu"})


def get_activation(activation, halving_ok: bool = False
                   ) -> tuple[str | None, Callable[[torch.Tensor], torch.Tensor]]:
    """(name or None for a callable, function) for a Keras activation name or a callable.

    Args:
        activation: a name of `ACTIVATIONS`, a callable, or None (linear).
        halving_ok: the caller accounts for "glu" halving the last axis in its output
            shape (Dense, Activation); others refuse it.

    Example:
        name, fn = get_activation("relu")
    """
    if activation is None:
        return "linear", ACTIVATIONS["linear"]
    if callable(activation):
        return None, activation
    if activation == "threshold":  # Keras accepts the name, then fails on the first call
        raise ValueError("activation 'threshold' needs its threshold and default_value; pass "
                         "a callable, e.g. activation=lambda x: "
                         "torch.nn.functional.threshold(x, 0.5, 0.0)")
    if isinstance(activation, str) and activation in ACTIVATIONS:
        if activation in HALVES_LAST_AXIS and not halving_ok:
            raise ValueError(f"activation {activation!r} halves the last axis, which this "
                             "layer's output shape does not allow for; put it in a separate "
                             "Activation layer")
        return activation, ACTIVATIONS[activation]
    raise ValueError(f"unknown activation {activation!r}; valid names: "
                     f"{', '.join(sorted(ACTIVATIONS))}, or pass a callable")
