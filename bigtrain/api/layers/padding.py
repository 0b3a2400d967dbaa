"""Window arithmetic shared by convolution and pooling layers: Keras's "valid", "same" and
"causal" output sizes and the TensorFlow-style "same" padding (the extra cell goes after);
and the check of the `data_format` argument the spatial layers share."""
from __future__ import annotations

import math


def data_format_of(layer, value) -> str:
    """Keras's `data_format` argument checked as Keras does (None: "channels_last", any
    case): a misspelt value must not pass as one of the two layouts."""
    fmt = "channels_last" if value is None else str(value).lower()
    if fmt not in ("channels_last", "channels_first"):
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: data_format must be "
                         f"'channels_last' or 'channels_first', got {value!r}")
    return fmt


def as_tuple(value, n: int, what: str, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of n ints >= `minimum` (1: positive), as n ints (Keras's
    standardize_tuple)."""
    values = (value,) * n if isinstance(value, int) else \
        tuple(value) if isinstance(value, (tuple, list)) else ()  # () for a float, a str...
    if len(values) != n or not all(isinstance(v, int) and v >= minimum for v in values):
        kind = "positive integer" if minimum == 1 else f"integer >= {minimum}"
        raise ValueError(f"{what} must be a {kind} or {n} such integers, got {value!r}")
    return values


def same_padding(size: int | None, kernel: int, stride: int,
                 dilation: int = 1) -> tuple[int, int]:
    """(before, after) cells of "same" padding: output ceil(size / stride), odd extra after.
    With stride 1 it does not depend on `size`, which may then be None (any size)."""
    if size is None:
        if stride != 1:
            raise ValueError("same padding with stride > 1 depends on the input's size")
        size = 1
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def window_output(size: int, kernel: int, stride: int, dilation: int, padding: str,
                  layer: str, kind: str) -> int:
    """Output length of one axis (None for an axis of any size, as Keras); a clear error
    when a "valid" window does not fit."""
    if size is None:
        return None
    if padding in ("same", "causal"):
        return math.ceil(size / stride)
    effective = (kernel - 1) * dilation + 1
    if effective > size:
        raise ValueError(f"{kind} {layer!r}: the window ({kernel}"
                         + (f", dilated to {effective}" if dilation > 1 else "")
                         + f") is larger than the input ({size}) along one axis with "
                         "padding='valid'; use a smaller kernel_size/pool_size or padding='same'")
    return (size - effective) // stride + 1
