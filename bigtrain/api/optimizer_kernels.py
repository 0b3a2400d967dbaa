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
"""
from __future__ import annotations

import inspect

import torch


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


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
