"""Every rank must run the same FSDP units in the same order in a training step (zero2,
zero3, fsdp_offload).

A unit's forward gathers its weights with one all-gather, which pairs with whatever gather
the other ranks make at that moment. A forward whose path depends on the data
(`self.a(h) if x.mean() > 0 else self.b(h)`) and goes another way on another rank pairs
unit a's gather on one rank with unit b's on the other: two units of one size then swap
shards, and the backward's reduce-scatters mix their gradients, with no error from torch.

`UnitOrder` keeps a running hash of the units each rank's training forward enters. After
backward and before the optimizer step, `check()` compares the ranks' hashes in one small
all-reduce and raises where they differ. It compares at each of the first
`EVERY_STEP_UNTIL` steps (a data-dependent path shows there, before any wrong update), then
every `EVERY` steps over the hash of all the steps since (one all-reduce costs a small
model's step several percent on CPU), and once more when the fit gathers its weights
(`finish`), so a difference anywhere stops the fit with an error.

    order = UnitOrder(units, device)   # after fully_shard
    ...forward, backward...
    order.check()                      # RuntimeError when the ranks' paths differed
    order.finish()                     # before the weights leave the ranks
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

_MODULUS = (1 << 61) - 1  # a prime: the hash of a sequence of unit numbers, kept in int64
EVERY_STEP_UNTIL = 20
EVERY = 20


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
        self.checked = 0  # the last step compared
        self._handles = [unit.register_forward_pre_hook(self._entered(i + 1))
                         for i, unit in enumerate(units)]

    def _entered(self, number: int):
        def hook(module, args):
            if module.training:  # evaluation pads its forwards (engine.evaluate): not checked
                self.trace = (self.trace * 1_000_003 + number) % _MODULUS
        return hook

    def check(self) -> None:
        """After a step's backward: compare (at this step's turn) and raise on every rank
        when the ranks' units since the last comparison differ."""
        self.steps += 1
        if self.steps <= EVERY_STEP_UNTIL or self.steps % EVERY == 0:
            self._compare()

    def finish(self) -> None:
        """Compare the steps not compared yet (every rank calls it, e.g. as the fit ends)."""
        if self.checked < self.steps:
            self._compare()

    def _compare(self) -> None:
        both = torch.tensor([self.trace, -self.trace], dtype=torch.int64, device=self.device)
        first, self.trace, self.checked = self.checked + 1, 0, self.steps
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = both.tolist()
        if high == -low:
            return
        when = (f"in training step {self.steps}" if first == self.steps else
                f"between training steps {first} and {self.steps}")
        applied = ("This step's update was not applied" if first == self.steps else
                   "The updates of those steps are wrong, and the fit stops here")
        raise RuntimeError(
            f"bigtrain: {when} the ranks ran different layers (a forward whose path depends "
            "on the data went another way on another rank). zero2, zero3 and fsdp_offload "
            "gather each layer's weights with the other ranks as it runs, so every rank must "
            "run the same layers in the same order, or the ranks exchange the wrong layers' "
            f"weights and train wrong. {applied}. Train this model with "
            "strategy=DataParallel(find_unused_parameters=True) (from bigtrain.parallel), "
            "or make the forward take one path on every rank.")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
