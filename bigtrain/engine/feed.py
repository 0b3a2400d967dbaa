"""One epoch of step batches for the loop, from any training data: arrays, a map-style
Dataset (optionally loaded by background worker processes), or a stream (generator,
IterableDataset, Parquet files, Hugging Face datasets).

The loop asks `feed_epoch(data, plan)` for a `Feed` and pulls one `StepBatch` per optimizer
step. Every source gives each rank exactly its share of each global batch, so results do
not depend on the number of ranks, on `workers`, or on where a run resumed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import count

import torch

from bigtrain.data.parts import count_rows, moved, rows_of
from bigtrain.data.streams import StreamEnded
from bigtrain.engine.data import (ArrayData, DatasetData, epoch_window, fit_inputs, fit_targets,
                                  global_batches, num_batches, sample_count, shard_bounds)
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


def largest_share(n: int, shard) -> int | None:
    """The most rows any rank of `shard`'s group takes of a global batch of `n`, or None
    where only this rank's cut is known (a `Shard` with uneven `bounds`)."""
    if getattr(shard, "bounds", None) is not None:
        return None
    return -(-n // shard[1])  # even split: the first n % count ranks take one more


def micro_split(local: torch.Tensor, n_global: int, accumulate: int, replicas: int,
                most: int | None = None):
    """(index slices, loss weights) of this rank's micro-batches: weights are
    n_micro / n_global * replicas, so averaged gradients equal the global-batch gradient.

    Every rank runs the same number of micro-steps, min(accumulate, most) where `most` is
    the largest share any rank takes (`largest_share`), else `accumulate`: a rank with fewer
    rows runs empty micro-steps of weight 0. Sharded strategies (FSDP2) gather and reduce in
    every micro-step, so ranks that skipped different empty ones would wait on each other
    forever."""
    if accumulate == 1:
        return [local], [local.shape[0] / n_global * replicas]
    steps = accumulate if most is None else max(1, min(accumulate, most))
    parts, weights = [], []
    for k in range(steps):
        a, b = shard_bounds(len(local), k, steps)
        parts.append(local[a:b])
        weights.append((b - a) / n_global * replicas)
    return parts, weights


class Feed:
    """Step batches of one epoch: `steps` (None when the stream's length is unknown) and
    `next()` -> (global batch size, StepBatch), or None when the stream has ended.
    `agree`: on several ranks, a `ShortestStream` that open-ended feeds ask before each
    step whether every rank still has a batch (None: this rank decides alone). `plain`: for
    arrays in the `_plain` case on one unsharded rank, a zero-argument function giving
    `(x, y, order)`, the whole inputs and targets and each left step's sample indices, which
    the batches are `index_select`s of (a loop may take them itself: no call per step);
    None otherwise."""

    def __init__(self, batches, steps: int | None, plain=None):
        self._it, self.steps = iter(batches), steps
        self._ahead = None
        self.agree = None
        self.plain = plain

    def step_numbers(self, first: int, epoch: int = 0):
        """Step indices from `first`; open-ended feeds stop where the stream ends (on
        several ranks, where the first rank's stream ends)."""
        if self.steps is not None:
            yield from range(first, self.steps)
            return
        for step in count(first):
            self._ahead = next(self._it, None)
            have = self._ahead is not None
            if self.agree is not None and not self.agree(have, step, epoch):
                self._ahead = None  # another rank ran out: this batch is not trained
                return
            if not have:
                return
            yield step

    def next(self):
        if self._ahead is not None:
            item, self._ahead = self._ahead, None
            return item
        return next(self._it)


class ShortestStream:
    """The ranks' agreement, before each step of a stream of unknown length, that every
    one still has a batch; the epoch ends for all where the shortest stream ends ("stop at
    the shortest": no rank trains a step the others cannot join, and no rank pads).

    Ranks that each read their own stream (a generator made on every rank under `bigtrain
    run`, an IterableDataset that reads by rank) may hold streams of different lengths. A
    rank that ran on alone started collectives no other rank joined: gloo aborted on the
    mismatch, or, where the sizes happened to match, it trained against another step's.
    The cost is one all-reduce of two numbers per step (a device sync where the ranks
    reduce on a GPU), paid only by streams of unknown length; the first epoch whose
    streams differ warns on rank 0, once per fit, naming each rank's batches.

    `reduce`: the strategy's `all_reduce` over the ranks that run the loop (all ranks, or
    a parameter server's workers: ranks 0..workers-1); `rank`, `world`: the job's.
    """

    def __init__(self, reduce, rank: int, world: int, device, is_main: bool):
        self.reduce, self.rank, self.world = reduce, rank, world
        self.device, self.is_main = device, is_main
        self.warned = False

    def __call__(self, have: bool, read: int, epoch: int) -> bool:
        """Whether every rank has a batch after the `read` batches of epoch `epoch`."""
        # (ranks with a batch, ranks in the loop): the same two numbers on every rank
        flags = torch.tensor([1.0 if have else 0.0, 1.0], device=self.device)
        ranks_with, ranks = (int(v) for v in self.reduce(flags).tolist())
        if ranks_with in (0, ranks):
            return ranks_with == ranks
        if not self.warned:  # every rank comes here together: the reduce below matches
            self.warned = True
            self._warn(have, read, epoch, ranks)
        return False

    def _warn(self, have: bool, read: int, epoch: int, ranks: int) -> None:
        table = torch.zeros(2 * self.world, device=self.device)  # (batches, had more) by rank
        table[2 * self.rank], table[2 * self.rank + 1] = float(read), float(have)
        rows = self.reduce(table).view(self.world, 2).tolist()[:ranks]
        if not self.is_main:
            return
        ended = ", ".join(f"rank {r}: {int(n)}" for r, (n, more) in enumerate(rows) if not more)
        longer = ", ".join(f"rank {r}: more than {int(n)}" for r, (n, more) in enumerate(rows)
                           if more)
        warnings.warn(
            f"epoch {epoch + 1}: the ranks' streams gave different numbers of batches "
            f"({ended}; {longer}); every rank stopped after {read}, where the shortest "
            "ended, and the longer streams' further batches were not trained. Give every "
            "rank a stream of the same length, or pass steps_per_epoch=N (warned once per "
            "fit)", UserWarning, stacklevel=2)


def stream_ends(strategy, n: int | None, steps_per_epoch: int | None,
                lockstep: bool = False) -> ShortestStream | None:
    """A fit's ShortestStream when several ranks read a stream of unknown length (`n`, the
    samples, None and no `steps_per_epoch`); arrays, Datasets and streams of known length
    pay nothing per step (the loop also asks only feeds whose `steps` is None). A strategy
    whose ranks do not meet every step (asynchronous parameter servers) may agree its own
    way (`stream_agreement`), unless `lockstep`: the ranks meet after every step anyway
    (rank-0-only batch hooks), and only the all-reduce keeps those meetings matched."""
    env = strategy.env
    if env.world_size < 2 or n is not None or steps_per_epoch is not None:
        return None
    own = None if lockstep else getattr(strategy, "stream_agreement", None)
    if own is not None:
        return own() or ShortestStream(strategy.all_reduce, env.rank, env.world_size,
                                       env.device, env.is_main)
    return ShortestStream(strategy.all_reduce, env.rank, env.world_size, env.device,
                          env.is_main)


def _step_indices(data: ArrayData, plan: EpochPlan, device=None) -> tuple[torch.Tensor, ...]:
    """The global batch of sample indices of every step left in the epoch (views of the
    pass's order, `data.pass_order`, moved to `device` when given)."""
    batches = num_batches(sample_count(data), plan.batch_size)
    data_pass, first, stop = epoch_window(plan.epoch, plan.steps_per_epoch, batches)
    perm = data.pass_order(data_pass, plan.seed, plan.shuffle)
    if device is not None:
        perm = perm.to(device)
    return global_batches(perm, plan.batch_size)[first + plan.skip:stop]


def _index_batches(data: ArrayData, plan: EpochPlan):
    """(global indices, this rank's micro index slices, weights) of every step left."""
    for gidx in _step_indices(data, plan):
        n = gidx.shape[0]  # not len(): a Python-level call on a tensor, per step
        lo, hi = local_rows(n, plan.shard)
        local = gidx if lo == 0 and hi == n else gidx[lo:hi]
        parts, weights = micro_split(local, n, plan.accumulate, plan.replicas,
                                     largest_share(n, plan.shard))
        yield n, parts, weights


def feed_epoch(data, plan: EpochPlan) -> Feed:
    """The Feed of `data` for `plan` (see the module docstring)."""
    if isinstance(data, StreamData):  # streams split their own batches (bigtrain.data)
        return data.feed(plan)
    batches = num_batches(sample_count(data), plan.batch_size)
    _, first, stop = epoch_window(plan.epoch, plan.steps_per_epoch, batches)
    steps = stop - first
    if isinstance(data, DatasetData) and data.loading.workers > 0:
        return Feed(_background(data, plan), steps)
    device = plan.device
    if _plain(data, plan):
        whole = plan.shard[1] == 1 and plan.replicas == 1  # each step: one batch, weight 1
        return Feed(_plain_batches(data, plan), steps,
                    (lambda: _plain_parts(data, plan)) if whole else None)

    def batches_now():
        for n, parts, weights in _index_batches(data, plan):
            yield n, StepBatch(micro=[data.take(p, device) for p in parts], weights=weights)
    return Feed(batches_now(), steps)


def _plain(data, plan: EpochPlan) -> bool:
    """The common case: one input and one target tensor already on the device, no sample
    weights, no accumulation, an even data shard."""
    if not isinstance(data, ArrayData) or plan.accumulate != 1 or data.sample_weight is not None \
            or getattr(plan.shard, "bounds", None) is not None or len(data.xs) != 1 \
            or len(data.ys) != 1:
        return False
    return all(isinstance(t, torch.Tensor) and t.device == plan.device
               for t in (data.xs[0], data.ys[0]))


def _plain_batches(data: ArrayData, plan: EpochPlan):
    """The batches `batches_now` would build in the `_plain` case, with fewer Python calls
    per step: each rank's rows taken by two index_selects. (Each call costs a small model's
    step its full time on a CPU: bench_fit's probe.)"""
    x, y, order = _plain_parts(data, plan)
    index, shards = plan.shard
    for gidx in order:
        n = gidx.shape[0]
        if shards > 1:
            lo, hi = shard_bounds(n, index, shards)
            gidx = gidx[lo:hi]
        weight = gidx.shape[0] / n * plan.replicas
        yield n, StepBatch(micro=[(x.index_select(0, gidx), y.index_select(0, gidx), None)],
                           weights=[weight])


def _plain_parts(data: ArrayData, plan: EpochPlan) -> tuple:
    """(inputs, targets, global batches of sample indices left in the epoch) of the `_plain`
    case; the Input's dtype and shape met once for the whole array, not per step."""
    x = fit_inputs(data.xs[0], data.inputs)
    return x, data.ys[0], _step_indices(data, plan, x.device)


def _background(data, plan: EpochPlan):
    """Steps whose micro-batches worker processes collate ahead of the step (a torch
    DataLoader over exactly the index slices the step would read)."""
    plans = list(_index_batches(data, plan))
    flat = [p.tolist() for _, parts, _ in plans for p in parts]
    batches = iter(data.loader_for(flat))
    for n, parts, weights in plans:
        micro = [data.finish(next(batches), plan.device) for _ in parts]
        yield n, StepBatch(micro=micro, weights=weights)


class StreamData:
    """Training data read in order (a `bigtrain.data` stream: generator, IterableDataset,
    Parquet files, Hugging Face datasets) rather than by index. `inputs`: per input, the
    InputSpec each batch is made to meet (engine.data; None: float64 becomes float32);
    `outputs`: the model's output names, which a dict y is keyed by (None: not known)."""

    def __init__(self, source, inputs: list | None = None, outputs: list | None = None):
        self.source, self.inputs, self.outputs = source, inputs, outputs
        self.xs, self.ys, self.sample_weight = [], [], None  # nothing to spill to files

    def sample_count(self) -> int | None:
        return self.source.samples()

    def __len__(self):
        raise TypeError("a stream (generator, IterableDataset, files) has no length and is "
                        "read in order: evaluate, predict and validation_data need arrays or "
                        "a map-style Dataset")

    def take(self, idx, device):
        raise TypeError("a stream is read in order, not by index")

    def split(self, fraction: float):
        raise ValueError(f"validation_split={fraction} needs the data's length and random "
                         "access, which a stream (generator, IterableDataset, files) lacks; "
                         "pass validation_data=(x_val, y_val) instead")

    def window(self, plan: EpochPlan) -> tuple[int, int, int | None]:
        """(data pass, first batch, stop batch or None) that epoch `plan.epoch` reads."""
        per_pass, spe = self.source.steps(plan.batch_size), plan.steps_per_epoch
        if per_pass is not None:
            return epoch_window(plan.epoch, spe, per_pass)
        if spe is not None:  # one endless pass: epochs take consecutive slices, as Keras
            return 0, plan.epoch * spe, (plan.epoch + 1) * spe
        if getattr(self.source, "one_shot", False) and plan.epoch > 0:
            raise ValueError(unknown_length_note("epochs > 1"))
        return plan.epoch, 0, None

    def feed(self, plan: EpochPlan) -> Feed:
        from bigtrain.data.streams import Window
        data_pass, first, stop = self.window(plan)
        index, shards = plan.shard
        window = Window(data_pass, first + plan.skip, stop, plan.batch_size,
                        rows=lambda n: local_rows(n, plan.shard), seed=plan.seed,
                        shuffle=plan.shuffle, shard=(index, shards),
                        what=f"epoch {plan.epoch + 1}")
        return Feed(self._steps(window, plan), None if stop is None else stop - first)

    def _steps(self, window, plan: EpochPlan):
        read = 0
        for n, (x, y, sw) in self.source.batches(window):
            read += 1
            x, y = fit_inputs(x, self.inputs), fit_targets(y, self.outputs)
            parts, weights = micro_split(torch.arange(count_rows(x)), n, plan.accumulate,
                                         plan.replicas, largest_share(n, plan.shard))
            micro = []
            for p in parts:
                a, b = (int(p[0]), int(p[-1]) + 1) if len(p) else (0, 0)
                micro.append(tuple(None if t is None else moved(rows_of(t, a, b), plan.device,
                                                                what)
                                   for t, what in zip((x, y, sw), ("x", "y", "sample_weight"))))
            yield n, StepBatch(micro=micro, weights=weights)
        if not read and window.start == 0:  # (a stream with a known end raises itself)
            raise StreamEnded(_no_batches(window.data_pass, plan.epoch))


def _no_batches(data_pass: int, epoch: int) -> str:
    again = "" if data_pass == 0 else (
        f" (pass {data_pass + 1} over it: an iterable read once already, e.g. an "
        "IterableDataset whose __iter__ returns the same iterator each time, gives nothing "
        "the second time; make __iter__ start again)")
    return (f"the stream gave no batches for epoch {epoch + 1}{again}; fit needs at least one "
            "(x, y) batch (or sample) per epoch")


def unknown_length_note(why: str) -> str:
    return (f"{why} needs the length of the data, and a generator's is unknown (it can be "
            "read once): pass steps_per_epoch=N (epochs then take consecutive slices of N "
            "batches), or a torch IterableDataset / a list of batches, which can be read "
            "again every epoch")


def check_stream(data, val, config) -> None:
    """Refuse, before training, what a stream cannot do under `config`."""
    if isinstance(val, StreamData):
        raise ValueError("validation data read in order (a stream) cannot be evaluated in "
                         "shards: give it as arrays or a map-style Dataset (fit's "
                         "validation_data reads a stream's batches into memory first)")
    if not isinstance(data, StreamData):
        return
    source = data.source
    if getattr(source, "one_shot", False) and config.steps_per_epoch is None and \
            config.epochs - config.initial_epoch > 1:
        raise ValueError(unknown_length_note(f"epochs={config.epochs}"))


def stream_data(source, y, inputs: list | None = None,
                outputs: list | None = None) -> StreamData:
    """`source` (from `bigtrain.data.streams.as_stream`) as training data; `inputs`,
    `outputs`: see StreamData."""
    if y is not None:
        raise ValueError("a generator, IterableDataset or file source brings its own targets: "
                         "pass y=None and let it yield (x, y) or (x, y, sample_weight)")
    return StreamData(source, inputs, outputs)


def input_sample(data, device, rows: int = 2):
    """Inputs of the first `rows` samples of `data`; None for a stream (read in order only)."""
    n = sample_count(data)
    if isinstance(data, StreamData) or not n:
        return None
    return data.take(torch.arange(min(rows, n)), device)[0]
