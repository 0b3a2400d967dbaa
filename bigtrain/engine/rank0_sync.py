"""Rank-0-only callbacks on several ranks: where the loop shares what they changed.

Callbacks that run on rank 0 only (checkpoints, progress, a user's learning-rate hook) may
change the learning rate, `stop_training` or the weights, or read split weights; every rank
must then meet at the same hooks. `rank0_sync` decides once per fit, from the whole callback
list, where those meetings are.

Example:
    sync = rank0_sync(task, strategy, optimizer, owner)
    sync.share()                      # after a hook: every rank takes rank 0's changes
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

from bigtrain.engine.callbacks._util import Rank0Changes, rank0_only_hooks


@dataclass
class Rank0Sync:
    """Where the loop gives every rank what rank-0-only callbacks changed (the learning
    rates, `stop_training`, the weights) and joins their reads of split weights (see
    Rank0Changes): after the train-begin, epoch and train-end hooks, and after the batch
    hooks such a callback overrides. `changes` is None, and nothing is
    shared, when one rank trains or no such callback runs."""
    owner: object
    changes: Rank0Changes | None = None
    batch_begin: bool = False
    batch_end: bool = False

    def share(self) -> None:
        if self.changes is not None:
            self.changes.share()

    @property
    def gather(self):
        """How rank 0's hooks read split weights with every rank (None: nothing to serve)."""
        return None if self.changes is None else self.changes.gather

    def train_end(self, finished: bool):
        """Around on_train_end: see Rank0Changes.train_end."""
        return nullcontext() if self.changes is None else self.changes.train_end(finished)


def rank0_sync(task, strategy, optimizer, owner) -> Rank0Sync:
    """The fit's Rank0Sync, decided from the whole callback list (the same on every rank,
    whichever hooks run where)."""
    cbs = task.callbacks
    if strategy.env.world_size < 2 or not rank0_only_hooks(cbs):
        return Rank0Sync(owner)
    changes = Rank0Changes(strategy.all_reduce, strategy.env.is_main, optimizer, owner,
                           strategy.env.device)
    return Rank0Sync(owner, changes,
                      rank0_only_hooks(cbs, "on_train_batch_begin", "on_batch_begin"),
                      rank0_only_hooks(cbs, "on_train_batch_end", "on_batch_end"))


def rank0_reads_weights(callbacks) -> bool:
    """Whether a callback reads weights on rank 0 only (checkpoints): it must not start a
    collective alone, so every rank gathers the full state before the epoch's callbacks."""
    return any(getattr(c, "needs_weights", False) for c in callbacks)
