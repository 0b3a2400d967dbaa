"""isinstance checks against torch.distributed types without importing them.

`torch.distributed.tensor` (DTensor) and `torch.distributed.optim` cost about 1.3 s to import
on a 2-core machine; a process that never imported them cannot hold one of their objects, so
the check is False there and the import is skipped. Every rank and every CLI command starts
faster by that much when it trains one process, with DDP or a parameter server.

Example:
    if is_dtensor(p):
        p = p._local_tensor
"""
from __future__ import annotations

import sys


def _class(module: str, name: str):
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def is_dtensor(t) -> bool:
    return loaded_instance(t, "torch.distributed.tensor", "DTensor")


def is_zero_optimizer(optimizer) -> bool:
    """A torch ZeroRedundancyOptimizer (zero1)."""
    return loaded_instance(optimizer, "torch.distributed.optim", "ZeroRedundancyOptimizer")


def loaded_instance(obj, module: str, name: str) -> bool:
    """isinstance(obj, module.name), False without importing `module` where it is not loaded."""
    cls = _class(module, name)
    return cls is not None and isinstance(obj, cls)
