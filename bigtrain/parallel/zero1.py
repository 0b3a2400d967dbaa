"""ZeRO stage 1: gradients all-reduced as in DDP, but each rank keeps the optimizer state
of only 1/N of the parameters (torch's ZeroRedundancyOptimizer) and broadcasts its updated
shard after the step.

    fit(..., strategy="zero1", devices=2)
"""
from __future__ import annotations

import inspect

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
    # defaults may hold keys the constructor does not take (AdamW's decoupled_weight_decay,
    # inherited from Adam): pass only what the class accepts
    accepted = inspect.signature(type(probe)).parameters
    kwargs = {k: v for k, v in probe.defaults.items() if k in accepted}
    return type(probe), kwargs, rules_of(probe)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters ZeRO partitions: those that train (at least one, so that
    ZeroRedundancyOptimizer gets a non-empty list; a model frozen whole trains nothing)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return params or list(module.parameters())[:1]


class Zero1(DataParallel):
    """DDP gradients + optimizer state sharded across ranks.

    The step is ZeroRedundancyOptimizer's public `step()` (the base class's optimizer_step,
    through the loss scaler under float16), so hooks registered on the optimizer fire.
    """

    name = "zero1"
    timing_note = ("gradients as in DDP (probed wait in comm_exposed); the broadcast of the "
                   "updated shards after the optimizer step is timed in comm_exposed")

    def check_model(self, module, world_size: int) -> None:
        """ZeroRedundancyOptimizer takes parameters of one dtype only; two are refused
        here, before any rank starts (inside torch it failed on every rank after the
        start). Frozen parameters do not count: ZeRO holds the trainable ones."""
        super().check_model(module, world_size)
        dtypes: dict = {}
        for name, p in module.named_parameters():
            if p.requires_grad:
                dtypes.setdefault(p.dtype, name)
        if world_size > 1 and len(dtypes) > 1:
            seen = ", ".join(f"{str(d).replace('torch.', '')} ({n})" for d, n in dtypes.items())
            raise ValueError(f"strategy 'zero1' needs every parameter in one dtype, but the "
                             f"model has {seen}; cast the model to one dtype (e.g. "
                             "module.float()), or use strategy='ddp', 'zero2' or 'zero3'")

    def setup_optimizer(self, module, make_optimizer):
        if not self.env.distributed:
            return make_optimizer(module.parameters())
        cls, kwargs, rules = optimizer_recipe(make_optimizer)
        # trainable parameters only: a rank whose partition held only frozen ones had no
        # state at all, which torch cannot load the next fit's carried state into
        zero = ZeroRedundancyOptimizer(trainable(module), optimizer_class=cls, **kwargs)
        if rules is not None:
            # every rank holds every (all-reduced) gradient: the global norm is local
            rules.attach(zero.optim, norm_params=list(module.parameters()))
        return zero

    def optimizer_step(self, optimizer, ctx) -> None:
        if not isinstance(optimizer, ZeroRedundancyOptimizer):
            return super().optimizer_step(optimizer, ctx)
        # ZeRO's public step() runs the local shard's step, then broadcasts every shard: a
        # post-step hook on the local optimizer marks where the broadcast starts (timed
        # apart); held for this step only, so the strategy keeps no reference to `ctx`
        hook = optimizer.optim.register_step_post_hook(
            lambda *_: ctx.mark("parameter broadcast", phase="comm"))
        try:
            super().optimizer_step(optimizer, ctx)
        finally:
            hook.remove()

    def describe(self) -> str:
        return "zero1 (ZeroRedundancyOptimizer over DDP)"


register("zero1", Zero1)
