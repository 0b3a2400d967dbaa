"""A plain multi-layer perceptron: the "traditional" network bigtrain starts from.

Single-device PyTorch only; strategies wrap it from outside. Layers are named so a
tensor-parallel plan can address them: `layers.0`, `layers.1`, ..., `head`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "linear": nn.Identity,
}


def make_activation(activation: str | Callable[[], nn.Module]) -> nn.Module:
    """An activation module from a name in `ACTIVATIONS` or a zero-argument factory.

    Example:
        >>> make_activation("gelu")
        GELU(approximate='none')
    """
    if callable(activation):
        module = activation()
        if not isinstance(module, nn.Module):
            raise TypeError(f"activation factory must return an nn.Module, got {module!r}.")
        return module
    try:
        return ACTIVATIONS[activation.lower()]()
    except (KeyError, AttributeError):
        raise ValueError(f"Unknown activation {activation!r}; use one of "
                         f"{sorted(ACTIVATIONS)} or pass an nn.Module class.") from None


class MLP(nn.Module):
    """Linear -> activation -> dropout for each hidden width, then a linear head.

    Args:
        in_features: width of the input, the last dimension of x.
        hidden: width of each hidden layer, in order (may be empty: a linear model).
        out_features: width of the output (logits; no activation on the head).
        activation: name from `ACTIVATIONS` ("relu", "gelu", ...) or an nn.Module class.
        dropout: probability of zeroing a hidden activation in training, in [0, 1).

    Example:
        >>> model = MLP(784, [256, 128], 10, dropout=0.1)
        >>> model(torch.zeros(32, 784)).shape
        torch.Size([32, 10])
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: str | Callable[[], nn.Module] = "relu", dropout: float = 0.0):
        super().__init__()
        widths = [in_features, *hidden, out_features]
        bad = [w for w in widths if not isinstance(w, int) or isinstance(w, bool) or w < 1]
        if bad:
            raise ValueError(f"MLP widths must be positive ints; got in_features={in_features}"
                             f", hidden={list(hidden)}, out_features={out_features}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a probability in [0, 1), got {dropout}.")
        self.in_features, self.out_features = in_features, out_features
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-2], widths[1:-1]))
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-2], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features) logits."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects inputs whose last dimension is {self.in_features}, "
                             f"got shape {tuple(x.shape)}; flatten images first, e.g. "
                             f"x.reshape(len(x), -1).")
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))  # (..., hidden_i)
        return self.head(x)
