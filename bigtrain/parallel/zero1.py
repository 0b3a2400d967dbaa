"""ZeRO stage 1: gradients all-reduced as in DDP, but each rank keeps the optimizer state
of only 1/N of the parameters (torch's ZeroRedundancyOptimizer) and broadcasts its updated
shard after the step.

    fit(..., strategy="zero1", devices=2)
"""
from __future__ import annotations

import torch
from torch.distributed.optim import ZeroRedundancyOptimizer

from bigtrain.parallel.base import register
from bigtrain.parallel.data_parallel import DataParallel


def optimizer_recipe(make_optimizer) -> tuple[type, dict]:
    """The class and keyword arguments `make_optimizer` uses, read off a one-parameter probe
    (ZeroRedundancyOptimizer builds its local optimizer itself)."""
    probe = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    return type(probe), dict(probe.defaults)


class Zero1(DataParallel):
    """DDP gradients + optimizer state sharded across ranks."""

    name = "zero1"
    timing_note = ("gradients as in DDP (probed wait in comm_exposed); the broadcast of the "
                   "updated shards after the optimizer step is timed in comm_exposed")

    def setup_optimizer(self, module, make_optimizer):
        if not self.env.distributed:
            return make_optimizer(module.parameters())
        cls, kwargs = optimizer_recipe(make_optimizer)
        return ZeroRedundancyOptimizer(module.parameters(), optimizer_class=cls, **kwargs)

    def optimizer_step(self, optimizer) -> None:
        """The local shard's update, then the broadcast of every shard (timed apart)."""
        if not isinstance(optimizer, ZeroRedundancyOptimizer) or self.grad_scaler is not None:
            return self.apply_update(optimizer)  # float16: ZeRO's whole step, via the scaler
        optimizer._local_step()
        self.mark("parameter broadcast", phase="comm")
        optimizer._sync_params()

    def describe(self) -> str:
        return "zero1 (ZeroRedundancyOptimizer over DDP)"


register("zero1", Zero1)
