"""The weights a callback sees when every rank of a fit runs its hook (`main_process_only =
False`): the whole model on every rank, as one process's `get_weights()` gives.

Every rank calls the hook together, so a read may be a collective. Some strategies hand the
gathered state to rank 0 only (zero2/3 and fsdp_offload gather to rank 0's host memory; a
pipeline gathers its stages on rank 0); there rank 0 then broadcasts it. A hook that reads
no weights costs nothing.

Example (what CallbackList does around such a hook):
    with every_rank_weights(model):
        callback.on_epoch_end(epoch, logs)
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from bigtrain.engine.callbacks.rank0_weights import keeps_whole_weights


class _AllRanksStrategy:
    """The strategy as `set_weights` sees it: reads the whole state on every rank."""

    def __init__(self, view: "AllRanksWeights"):
        self._view = view

    def full_state_dict(self, module) -> dict[str, torch.Tensor]:
        return self._view.full_state()

    def __getattr__(self, name):
        return getattr(self._view.live.strategy, name)


class AllRanksWeights:
    """What `model.live` is while every rank runs a callback's hook.

    Args:
        live: the fit's LiveWeights.
    """

    def __init__(self, live):
        self.live, self.module, self.strategy = live, live.module, _AllRanksStrategy(self)

    def full_state(self) -> dict[str, torch.Tensor]:
        """The full state on every rank. Collectives: the strategy's gather, one all-reduce
        of a flag (did some rank get nothing?) and then, if so, a broadcast from rank 0."""
        state = self.live.full_state()
        if keeps_whole_weights(self.live.strategy):
            return state
        strategy = self.live.strategy
        empty = strategy.all_reduce(torch.tensor([0.0 if state else 1.0],
                                                 device=strategy.env.device))
        if empty.item():
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        return state

    def __getattr__(self, name):
        return getattr(self.live, name)


@contextlib.contextmanager
def every_rank_weights(model):
    """`model.live` reads as AllRanksWeights while the block runs (no fit: as is)."""
    live = getattr(model, "live", None)
    if live is None or not live.distributed:
        yield
        return
    model.live = AllRanksWeights(live)
    try:
        yield
    finally:
        model.live = live
