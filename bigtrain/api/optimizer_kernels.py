"""Which torch optimizer kernel runs, chosen from what the parameters are.

torch.optim has three implementations of most optimizers: `fused` (one kernel per step,
3-6x faster on CPU), `foreach` (one op per tensor list) and a per-parameter loop. Sharded
strategies hand the optimizer DTensors, and not every kernel takes them:

    parameters                          kernel        why
    plain dense floating tensors        fused         fastest
    all DTensors (zero2/3, offload)     foreach/loop  DTensor has no rule for _fused_sgd_
                                                      (torch's default: foreach on GPUs)
    DTensors mixed with plain tensors   loop          fused and foreach ops refuse a list
    (tensor parallel, a Linear left                   that mixes torch.Tensor and DTensor
    replicated)

Arguments the user set (`fused=`, `foreach=`) are kept as given.

The optimizers that give the Keras names Keras 3's arithmetic are torch optimizers that run
on these kernels, one family per module, and are importable from here (optimizer_config.py
names bigtrain's optimizer classes in model files by looking them up in this module):

    optimizer_hooked.py       Adam, AdamW (torch's Adam kernels, fused included, with
                              Keras's epsilon); SGD (Keras's momentum under a changing lr)
    optimizer_foreach.py      RMSprop, Adagrad (Keras's formulas in torch._foreach ops)
    optimizer_per_tensor.py   Lion, Ftrl, Lamb (Keras's rules torch lacks, per tensor)
"""
from __future__ import annotations

import inspect

import torch

from bigtrain.api.optimizer_foreach import Adagrad, RMSprop
from bigtrain.api.optimizer_hooked import SGD, Adam, AdamW
from bigtrain.api.optimizer_per_tensor import Ftrl, Lamb, Lion

__all__ = ["kernel_options", "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Lion", "Ftrl",
           "Lamb"]


def _is_dtensor(t: torch.Tensor) -> bool:
    from bigtrain.parallel.lazy_types import is_dtensor
    return is_dtensor(t)


def kernel_options(cls: type, params: list, kwargs: dict) -> dict:
    """`fused` / `foreach` keyword arguments for `cls(params, **kwargs)` (see module docstring).

    Args:
        cls: a torch.optim.Optimizer subclass.
        params: tensors, or param-group dicts with a "params" list.
        kwargs: the arguments the optimizer is built with; keys set there are left alone.

    Example:
        kernel_options(torch.optim.SGD, [torch.nn.Parameter(torch.zeros(2))], {})
        # {"fused": True}
    """
    accepted = inspect.signature(cls).parameters
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])
               if isinstance(p, torch.Tensor)]
    sharded = [_is_dtensor(p) for p in tensors]
    out = {}
    if any(sharded):
        if "fused" in accepted and "fused" not in kwargs:
            out["fused"] = False
        if not all(sharded) and "foreach" in accepted and "foreach" not in kwargs:
            out["foreach"] = False
    elif ("fused" in accepted and "fused" not in kwargs
          and all(not p.is_sparse and p.is_floating_point() for p in tensors)):
        out["fused"] = True
    return out
