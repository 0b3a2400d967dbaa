"""The source of a functional graph: `Input` (as `keras.Input`) and the `InputLayer` it makes."""
from __future__ import annotations

import numpy as np
import torch

from bigtrain.api.layers.base import KerasTensor, Layer, Node, unique_name


class InputLayer(Layer):
    """The source of a functional graph; made by `Input`."""

    def __init__(self, shape, dtype=torch.float32, name=None):
        super().__init__(name=name or unique_name("input_layer"))
        self.shape = tuple(shape)
        self.dtype = dtype
        self.built, self.input_shape_ = True, self.shape

    def call(self, x):
        return x

    def get_config(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).split(".")[-1]}


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64,
           "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}


def _input_dtype(dtype) -> torch.dtype:
    """Input's `dtype=` as a torch dtype: a name Keras takes ("float32", "uint8", "bool",
    ...), a numpy dtype (np.float32, np.dtype("int64")) or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None)
    if name not in _DTYPES:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name not in _DTYPES:
        raise ValueError(f"Input(dtype={dtype!r}): unknown dtype; use one of "
                         f"{', '.join(_DTYPES)} (a float Input is cast to the model's "
                         "float dtype, as Keras's layers cast their inputs)")
    return _DTYPES[name]


def Input(shape=None, batch_size=None, dtype=None, sparse=None, ragged=None,
          batch_shape=None, name: str | None = None, tensor=None,
          optional=False) -> KerasTensor:
    """A symbolic input of `shape` (without the batch axis; None: any size), as `keras.Input`.

    `batch_shape=(batch, *shape)` may stand for `shape` (its first entry, like
    `batch_size`, is accepted and not enforced: every batch size runs). Sparse, ragged,
    optional and tensor-backed inputs are refused.

    Example:
        x = Input(shape=(1000,))
        ids = Input(batch_shape=(None, 16), dtype="int64")
    """
    for arg, value in (("sparse", sparse), ("ragged", ragged), ("optional", optional)):
        if value:
            raise ValueError(f"Input({arg}=True) is not supported: bigtrain's inputs are dense "
                             "tensors with every entry present; pass dense arrays")
    if tensor is not None:
        raise ValueError("Input(tensor=...) is not supported: build the model from "
                         "Input(shape=...) and pass the data to fit/predict")
    if batch_shape is not None:
        if shape is not None and tuple(shape) != tuple(batch_shape)[1:]:
            raise ValueError(f"Input got shape={shape} and batch_shape={batch_shape}, which "
                             "disagree; pass one of them")
        shape = tuple(batch_shape)[1:]
    if shape is None:
        raise ValueError("Input needs shape= (without the batch axis) or batch_shape=")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"Input batch_size must be a positive integer or None, "
                         f"got {batch_size!r}")
    dtype = "float32" if dtype is None else dtype
    shape = (shape,) if isinstance(shape, int) else shape
    if not all(s is None or isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"Input shape must be positive integers (None: any size) without "
                         f"the batch axis, got {shape}")
    torch_dtype = _input_dtype(dtype)
    layer = InputLayer(shape, torch_dtype, name)
    node = Node(layer, [], False)
    out = KerasTensor(tuple(shape), torch_dtype, node, 0)
    node.outputs.append(out)
    layer.record_node(node)  # Keras's input_layer.output (and .input): this tensor
    return out
