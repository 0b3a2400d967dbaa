"""One epoch of step batches for the loop, from any training data: arrays, a map-style
Dataset (optionally loaded by background worker processes), or a stream (generator,
IterableDataset, Parquet files, Hugging Face datasets).

The loop asks `feed_epoch(data, plan)` for a `Feed` and pulls one `StepBatch` per optimizer
step. Every source gives each rank exactly its share of each global batch, so results do
not depend on the number of ranks, on `workers`, or on where a run resumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import count, islice

import torch

from bigtrain.engine.data import (ArrayData, epoch_permutation, epoch_window, global_batches,
                                  num_batches, shard_bounds)
from bigtrain.parallel.base import StepBatch


@dataclass(frozen=True)
class EpochPlan:
    """What one rank trains on in one epoch.

    Attributes:
        epoch: 0-based epoch.
        batch_size: global batch (samples per optimizer step over all ranks).
        steps_per_epoch: optimizer steps per epoch, or None (one pass).
        seed, shuffle: the data order (the same on every rank and rank count).
        shard: `strategy.data_shard()`: (index, count) or a `Shard` with uneven `bounds`.
        accumulate: micro-batches per step; replicas: gradient-averaging replicas.
        skip: batches of this epoch already trained (a resumed run).
        device: where batches go.
    """
    epoch: int
    batch_size: int
    steps_per_epoch: int | None
    seed: int
    shuffle: bool
    shard: tuple
    accumulate: int
    replicas: int
    skip: int
    device: torch.device


def local_rows(n: int, shard) -> tuple[int, int]:
    """[start, stop) of this rank's rows in a global batch of `n`."""
    bounds = getattr(shard, "bounds", None)
    return bounds(n) if bounds is not None else shard_bounds(n, *shard)


def micro_split(local: torch.Tensor, n_global: int, accumulate: int, replicas: int):
    """(index slices, loss weights) of this rank's micro-batches: weights are
    n_micro / n_global * replicas, so averaged gradients equal the global-batch gradient."""
    if accumulate == 1:
        return [local], [len(local) / n_global * replicas]
    parts, weights = [], []
    for k in range(accumulate):
        a, b = shard_bounds(len(local), k, accumulate)
        if b == a and k < accumulate - 1:
            continue  # an empty micro-step would only cost time; the last one always runs
        parts.append(local[a:b])
        weights.append((b - a) / n_global * replicas)
    return parts, weights


class Feed:
    """Step batches of one epoch: `steps` (None when the stream's length is unknown) and
    `next()` -> (global batch size, StepBatch), or None when the stream has ended."""

    def __init__(self, batches, steps: int | None):
        self._it, self.steps = iter(batches), steps
        self._ahead = None

    def step_numbers(self, first: int):
        """Step indices from `first`; open-ended feeds stop where the stream ends."""
        if self.steps is not None:
            yield from range(first, self.steps)
            return
        for step in count(first):
            self._ahead = next(self._it, None)
            if self._ahead is None:
                return
            yield step

    def next(self):
        if self._ahead is not None:
            item, self._ahead = self._ahead, None
            return item
        return next(self._it)


def _index_batches(data: ArrayData, plan: EpochPlan):
    """(global indices, this rank's micro index slices, weights) of every step left."""
    batches = num_batches(len(data), plan.batch_size)
    data_pass, first, stop = epoch_window(plan.epoch, plan.steps_per_epoch, batches)
    perm = epoch_permutation(len(data), plan.seed, data_pass, plan.shuffle)
    for gidx in islice(global_batches(perm, plan.batch_size), first + plan.skip, stop):
        lo, hi = local_rows(len(gidx), plan.shard)
        local = gidx if lo == 0 and hi == len(gidx) else gidx[lo:hi]
        parts, weights = micro_split(local, len(gidx), plan.accumulate, plan.replicas)
        yield len(gidx), parts, weights


def feed_epoch(data, plan: EpochPlan) -> Feed:
    """The Feed of `data` for `plan` (see the module docstring)."""
    if hasattr(data, "stream_feed"):  # streams split their own batches (bigtrain.data)
        return data.stream_feed(plan)
    batches = num_batches(len(data), plan.batch_size)
    _, first, stop = epoch_window(plan.epoch, plan.steps_per_epoch, batches)
    steps = stop - first
    loader = getattr(data, "loading", None)
    if loader is not None and loader.workers > 0:
        return Feed(_background(data, plan), steps)
    device = plan.device

    def batches_now():
        for n, parts, weights in _index_batches(data, plan):
            yield n, StepBatch(micro=[data.take(p, device) for p in parts], weights=weights)
    return Feed(batches_now(), steps)


def _background(data, plan: EpochPlan):
    """Steps whose micro-batches worker processes collate ahead of the step (a torch
    DataLoader over exactly the index slices the step would read)."""
    plans = list(_index_batches(data, plan))
    flat = [p.tolist() for _, parts, _ in plans for p in parts]
    batches = iter(data.loader_for(flat))
    for n, parts, weights in plans:
        micro = [data.finish(next(batches), plan.device) for _ in parts]
        yield n, StepBatch(micro=micro, weights=weights)
