"""What a micro-batch's inputs look like to a strategy: one tensor, or a tuple of tensors for
a multi-input model. Written once here so every step calls and counts them the same way.

Example:
    out = call_module(module, x)                  # module(x), or module(*x) for a tuple
    n = batch_rows(batch.micro)                   # samples in this rank's micro-batches
"""
from __future__ import annotations

from torch import nn


def call_module(module: nn.Module, x):
    """`module(*x)` when `x` is a tuple of inputs (multi-input model), else `module(x)`."""
    return module(*x) if isinstance(x, tuple) else module(x)


def rows(t) -> int:
    """Samples in a batch: the first dimension of the tensor (of the first one of a tuple or
    list of tensors)."""
    return int((t[0] if isinstance(t, (tuple, list)) else t).shape[0])


def batch_rows(micro) -> int:
    """Samples in a list of (inputs, targets, sample_weight) micro-batches, counted on the
    targets (on the inputs where a micro-batch has none)."""
    return sum(rows(y if y is not None else x) for x, y, _ in micro)
