"""ZeRO stage 1: gradients all-reduced as in DDP, but each rank keeps the optimizer state
of only 1/N of the parameters (torch's ZeroRedundancyOptimizer) and broadcasts its updated
shard after the step.

    fit(..., strategy="zero1", devices=2)
"""
from __future__ import annotations

import torch
from torch.distributed.optim import ZeroRedundancyOptimizer

from bigtrain.parallel.update_rules import rules_of
from bigtrain.parallel.base import register
from bigtrain.parallel.data_parallel import DataParallel


def optimizer_recipe(make_optimizer) -> tuple[type, dict, object]:
    """The class, keyword arguments and Keras update rules (bigtrain.parallel.update_rules)
    `make_optimizer` uses, read off a one-parameter probe (ZeroRedundancyOptimizer builds
    its local optimizer itself, so the rules are hooked into it afterwards)."""
    probe = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    return type(probe), dict(probe.defaults), rules_of(probe)


class Zero1(DataParallel):
    """DDP gradients + optimizer state sharded across ranks."""

    name = "zero1"
    timing_note = ("gradients as in DDP (probed wait in comm_exposed); the broadcast of the "
                   "updated shards after the optimizer step is timed in comm_exposed")

    def setup_optimizer(self, module, make_optimizer):
        if not self.env.distributed:
            return make_optimizer(module.parameters())
        cls, kwargs, rules = optimizer_recipe(make_optimizer)
        optimizer = ZeroRedundancyOptimizer(module.parameters(), optimizer_class=cls, **kwargs)
        if rules is not None:
            # every rank holds every (all-reduced) gradient: the global norm is local
            rules.attach(optimizer.optim, norm_params=list(module.parameters()))
        return optimizer

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
