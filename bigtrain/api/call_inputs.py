"""What `model(x)` makes of numpy inputs before the network runs, as Keras's `model(x)`:
numpy arrays become tensors on the model's device, a dict is read by the inputs' names,
and a functional model's array inputs take their Input's dtype and rank.

Keras converts in `Layer.__call__` and `Functional._standardize_inputs`: an array is
converted to its `Input`'s dtype (float64 -> float32, ints -> float32 for a float Input,
int64 -> int32 for an `Input(dtype="int32")`), and one a rank off whose odd axis is 1 is
squeezed or expanded (`(n,)` for `Input(shape=(1,))`). A float Input takes the weights'
float dtype (a model made `.double()` or `.half()` gets arrays in its own precision). A
plain torch module (no Inputs) gets arrays as tensors, float64 as float32 (Keras's floatx,
as fit feeds it). Torch tensors go to the network as given (a model called as a layer
inside another passes its activations in the precision the step runs in), but a float64
tensor takes the weights' float dtype, as Keras's layers cast it (a float32 model would
fail on it: "mat1 and mat2 must have the same dtype"), and so does any float tensor given to
a functional model outside autocast (a bf16 tensor to a float32 model, or the reverse).

Example:
    model([x_a, x_b])                # two numpy arrays -> one output tensor
    model({"a": x_a, "b": x_b})      # the same, by input name
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bigtrain.api.functional import GraphModule
from bigtrain.data.parts import by_name


def call_inputs(net: nn.Module, xs: tuple) -> tuple:
    """`xs` (model(*xs)'s positional inputs) as the values `net` runs on."""
    if len(xs) == 1 and isinstance(xs[0], dict) and isinstance(net, GraphModule):
        named = by_name(xs[0], net.input_names, "x", "inputs")  # Keras's model({"a": xa})
        xs = named if isinstance(named, tuple) else (named,)
    graph = isinstance(net, GraphModule)
    if not any(_is_array(x) or _is_double(x) or graph and _uncast(x) for x in xs):
        return xs
    device, float_dtype = weights_of(net)
    if not graph:
        return tuple(_tensor(x, device, {torch.float64: float_dtype}) if _is_array(x) else
                     x.to(float_dtype) if _is_double(x) else x for x in xs)
    specs = net.input_tensors  # extra or missing inputs: the graph's own error says so
    return tuple(_as_input(x, specs[i], device, float_dtype)
                 if i < len(specs) and (_is_array(x) or _is_double(x)
                                        or _uncast(x) and x.dtype != float_dtype) else x
                 for i, x in enumerate(xs))


def _is_double(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.float64


def _uncast(x) -> bool:
    """A float tensor outside autocast, which Keras's layers cast to their compute dtype
    when it differs (a bf16 tensor stopped a float32 model at its first matmul: "mat1 and
    mat2 must have the same dtype"); under autocast it is in the step's own precision and
    goes on as it is."""
    return isinstance(x, torch.Tensor) and x.is_floating_point() \
        and not torch.is_autocast_enabled(x.device.type)


def _is_array(x) -> bool:
    """A numpy array or another array-like (`__array__`) that is not a torch tensor."""
    return not isinstance(x, torch.Tensor) and hasattr(x, "__array__")


def weights_of(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, float dtype) of the network's weights: where arrays go, and the precision a
    float input takes; the CPU and float32 without float weights."""
    for t in (*net.parameters(), *net.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _tensor(x, device: torch.device, casts: dict) -> torch.Tensor:
    """Array `x` as a tensor on `device`, its dtype changed where `casts` names it."""
    t = torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=casts.get(t.dtype, t.dtype))


def _as_input(x, spec, device: torch.device, float_dtype: torch.dtype) -> torch.Tensor:
    """Array `x` (or a float64 tensor) as one functional input in its Input's dtype and
    rank, as Keras's Functional takes it (`spec`: the Input's KerasTensor; shape without
    the batch axis)."""
    want = float_dtype if spec.dtype.is_floating_point else spec.dtype
    if isinstance(x, torch.Tensor):  # float64: its dtype only; a tensor stays where it is
        return x.to(dtype=want)
    t = torch.as_tensor(np.asarray(x))
    rank = len(spec.shape) + 1  # with the batch axis
    if t.dim() == rank + 1 and t.shape[-1] == 1:
        t = t.squeeze(-1)  # (n, 3, 1) for Input(shape=(3,))
    elif t.dim() == rank - 1 and spec.shape and spec.shape[-1] == 1:
        t = t.unsqueeze(-1)  # (n,) for Input(shape=(1,))
    return t.to(device=device, dtype=want)
