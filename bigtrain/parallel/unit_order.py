"""Every rank must run the same FSDP units in the same order in a training step (zero2,
zero3, fsdp_offload).

A unit's forward gathers its weights with one all-gather, which pairs with whatever gather
the other ranks make at that moment. A forward whose path depends on the data
(`self.a(h) if x.mean() > 0 else self.b(h)`) and goes another way on another rank pairs
unit a's gather on one rank with unit b's on the other: two units of one size then swap
shards, and the backward's reduce-scatters mix their gradients, with no error from torch.

`UnitOrder` keeps a running hash of the units each rank's training forward enters. After
backward and before the optimizer step, `check()` compares the ranks' hashes in one small
all-reduce and raises where they differ, so the wrongly paired gradients never reach the
weights.

    order = UnitOrder(units, device)   # after fully_shard
    ...forward, backward...
    order.check()                      # RuntimeError when the ranks' paths differed
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

_MODULUS = (1 << 61) - 1  # a prime: the hash of a sequence of unit numbers, kept in int64


class UnitOrder:
    """The sequence of FSDP units this rank's training forwards entered since the last check.

    Args:
        units: the modules `fully_shard` made units, in a fixed order (the same on every rank).
        device: where the check's all-reduce runs (the process group's device).
    """

    def __init__(self, units: list[nn.Module], device: torch.device):
        self.device = device
        self.trace = 0
        self.steps = 0
        self._handles = [unit.register_forward_pre_hook(self._entered(i + 1))
                         for i, unit in enumerate(units)]

    def _entered(self, number: int):
        def hook(module, args):
            if module.training:  # evaluation pads its forwards (engine.evaluate): not checked
                self.trace = (self.trace * 1_000_003 + number) % _MODULUS
        return hook

    def check(self) -> None:
        """Raise on every rank when the ranks' units since the last check differ."""
        both = torch.tensor([self.trace, -self.trace], dtype=torch.int64, device=self.device)
        self.trace = 0
        self.steps += 1
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = both.tolist()
        if high != -low:
            raise RuntimeError(
                f"bigtrain: in training step {self.steps} the ranks ran different layers "
                "(a forward whose path depends on the data went another way on another "
                "rank). zero2, zero3 and fsdp_offload gather each layer's weights with the "
                "other ranks as it runs, so every rank must run the same layers in the same "
                "order, or the ranks exchange the wrong layers' weights and train wrong. This "
                "step's update was not applied. Train this model with "
                "strategy=DataParallel(find_unused_parameters=True) (from bigtrain.parallel), "
                "or make the forward take one path on every rank.")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
