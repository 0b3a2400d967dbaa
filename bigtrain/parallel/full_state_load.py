"""Loading a whole model's state into a running split model: a tensor-parallel module's
DTensor shards, a pipeline stage's layers.

Every rank must already hold the same full state (e.g. after rank 0's values were
all-reduced to every rank): each rank then copies its own part in place, so the optimizer
keeps its references to the parameters. Collectives: none (a DTensor's shard is sliced
from the full tensor on its own rank, `src_data_rank=None`).

Example (what TensorParallel.load_full_state_dict does):
    load_full_into(module, state)                     # state: {name: full CPU tensor}
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _local_part(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The part of `full` that this rank keeps for `target` (a DTensor's shard, else all)."""
    if not hasattr(target, "to_local"):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(target.device), target.device_mesh, target.placements,
                             src_data_rank=None).to_local()


def load_full_into(module: nn.Module, state: dict[str, torch.Tensor],
                   name: Callable[[str], str] = str) -> None:
    """Copy each of `module`'s state tensors from `state[name(key)]`, in place.

    Args:
        module: a module whose state may hold DTensors (tensor-parallel layers).
        state: full tensors under the user's model's names.
        name: maps `module`'s own state-dict key to its name in `state` (a pipeline
            stage's "layers.<j>.<rest>" to the original layer's name).
    """
    missing = [k for k in module.state_dict() if name(k) not in state]
    if missing:
        raise KeyError(f"the new weights lack {[name(k) for k in missing[:5]]}: pass the whole "
                       "model's state (set_weights covers every weight)")
    with torch.no_grad():
        for key, target in module.state_dict().items():
            local = target.to_local() if hasattr(target, "to_local") else target
            part = _local_part(state[name(key)], target)
            local.copy_(part.reshape(local.shape).to(local.dtype))
