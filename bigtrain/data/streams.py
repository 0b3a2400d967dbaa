"""Streams for `fit`: data read in order rather than by index, sharded per rank.

A stream is read as a sequence of GLOBAL batches (bigtrain's batch_size is the batch over
all ranks); every rank walks the same sequence and keeps only its rows of each batch, so no
sample is seen twice in an epoch and results do not depend on the number of ranks.

- `BatchStream`: a Python generator (or any iterable) of batches `(x, y)` or
  `(x, y, sample_weight)`, as Keras takes generators; each item is one global batch.
- `SampleStream`: a torch `IterableDataset` (or any iterable of samples) whose items are
  `(x, y)` / `(x, y, sample_weight)`; `batch_size` consecutive samples form a global batch
  and each rank collates only its own rows.

Both read `Window`s: pass `data_pass` of the stream, batches `[start, stop)` (stop None: to
the end). A stream that ends before `stop` raises `StreamEnded` naming how far it got.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Callable

import numpy as np
import torch

from bigtrain.data.parts import count_rows, rows_of


class StreamEnded(ValueError):
    """The stream ran out before the batches an epoch needs."""


@dataclass(frozen=True)
class Window:
    """Which batches of which pass one rank reads.

    Attributes:
        data_pass: 0-based pass over the stream (each pass starts the stream again).
        start, stop: global batches [start, stop) of that pass; stop None: to the end.
        batch_size: samples per global batch (sample streams; batch streams bring theirs).
        rows: `rows(n)` -> this rank's [lo, hi) of a global batch of n samples.
        seed, shuffle: the data order (sources that can shuffle).
        shard: (index, count) of this rank among the data-parallel ranks.
        what: how the epoch is named in errors ("epoch 3").
    """
    data_pass: int
    start: int
    stop: int | None
    batch_size: int
    rows: Callable[[int], tuple[int, int]]
    seed: int = 0
    shuffle: bool = False
    shard: tuple = (0, 1)
    what: str = "this epoch"


def _check_item(item, kind: str, index: int):
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(f"{kind} {index} is a {type(item).__name__}; fit needs each to be "
                         "(x, y) or (x, y, sample_weight)")
    return item


def _ended(kind: str, got: int, window: Window) -> StreamEnded:
    want = f"batches {window.start}..{window.stop - 1}" if window.stop else "more batches"
    return StreamEnded(f"the {kind} ended after {got} batches of pass {window.data_pass}, but "
                       f"{window.what} needs {want} (steps_per_epoch counts batches). Make it "
                       "yield enough batches (for example loop forever), or lower "
                       "steps_per_epoch or epochs")


class BatchStream:
    """Global batches from a generator or a re-iterable (a list, a DataLoader over an
    IterableDataset). A generator can be read once: later passes continue where it is."""

    is_bigtrain_stream = True

    def __init__(self, source, one_rank: str | None = None):
        self.source = source
        self.one_shot = iter(source) is source
        self.read = 0  # batches a one-shot source has given so far
        self.one_rank = one_rank  # why the source can be read on one rank only, or None

    def __reduce__(self):
        if self.one_shot:
            raise TypeError(
                "a Python generator cannot be sent to the processes fit starts "
                "(devices=N): pass a torch IterableDataset (or a list of batches), or start "
                "the script with `bigtrain run --nproc-per-node N script.py` so every rank "
                "makes its own generator")
        return (BatchStream, (self.source, self.one_rank))

    def steps(self, batch_size: int) -> int | None:
        """Batches per pass when the source has a len(), else None (its own batch size)."""
        if self.one_shot:
            return None
        try:
            return len(self.source)
        except TypeError:
            return None

    def samples(self) -> int | None:
        return None  # batches bring their own sizes

    def _pass(self, window: Window):
        """An iterator over one pass of a re-iterable source (a sequence in the pass's
        order: fit's shuffle permutes its batches, as Keras's)."""
        if isinstance(self.source, Sequence):
            return self.source.ordered(window.data_pass, window.seed, window.shuffle)
        return iter(self.source)

    def batches(self, window: Window):
        """(global rows, this rank's (x, y, sample_weight) rows) of each batch in window."""
        if self.one_rank and window.shard[1] > 1:
            raise ValueError(self.one_rank)
        if self.one_shot:
            if window.start < self.read:
                raise StreamEnded(f"a generator cannot go back to batch {window.start} (it has "
                                  f"given {self.read}); pass a fresh generator to each fit")
            it, at = self.source, self.read
        else:
            it, at = self._pass(window), 0
        got = at
        for item in it:
            got += 1
            if self.one_shot:
                self.read = got
            if got <= window.start:
                continue  # before the window: read past (a stream cannot jump)
            x, y, *sw = _check_item(item, "batch", got - 1)
            n = count_rows(x)
            lo, hi = window.rows(n)
            yield n, (rows_of(x, lo, hi), rows_of(y, lo, hi),
                      rows_of(sw[0], lo, hi) if sw else None)
            if window.stop is not None and got >= window.stop:
                return
        if window.stop is not None:
            raise _ended("generator" if self.one_shot else "batch source",
                         got - window.start, window)


class SampleStream:
    """Samples from a torch IterableDataset (or any re-iterable of (x, y[, w]) samples);
    `batch_size` consecutive samples make one global batch."""

    is_bigtrain_stream = True

    def __init__(self, source, collate=None):
        self.source, self.collate = source, collate

    def samples(self) -> int | None:
        """Samples per pass when the dataset has a len(), else None."""
        try:
            return len(self.source)
        except TypeError:
            return None

    def steps(self, batch_size: int) -> int | None:
        n = self.samples()
        return None if n is None else -(-n // batch_size)

    def batches(self, window: Window):
        from torch.utils.data import default_collate
        collate = self.collate or default_collate
        samples = iter(self.source)
        size = window.batch_size
        for _ in range(window.start):  # read past the batches before the window
            if len(list(islice(samples, size))) == 0:
                raise _ended("dataset", 0, window)
        step = window.start
        while window.stop is None or step < window.stop:
            chunk = list(islice(samples, size))
            if not chunk:
                if window.stop is not None:
                    raise _ended("dataset", step - window.start, window)
                return
            lo, hi = window.rows(len(chunk))
            mine = [_check_item(s, "sample", step * size + lo + i)
                    for i, s in enumerate(chunk[lo:hi])]
            yield len(chunk), _collated(collate, mine, chunk[0])
            step += 1


def _collated(collate, items: list, example) -> tuple:
    """(x, y, sample_weight) collated from `items`; zero rows shaped like `example` when
    this rank's share is empty."""
    parts = collate(items) if items else [rows_of(p, 0, 0) for p in collate([example])]
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


class Sequence:
    """Batches `source[0] .. source[len - 1]` of a keras.utils.PyDataset-like object (with
    `__len__` and `__getitem__`), read again each pass, in an order fit's shuffle permutes;
    its `on_epoch_end()`, where it has one, runs after each whole pass, as Keras calls
    it."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        return self.ordered(0, 0, False)

    def ordered(self, data_pass: int, seed: int, shuffle: bool):
        """The batches of one pass; with `shuffle`, in a permutation seeded by (seed,
        pass), the same on every rank (Keras shuffles a PyDataset's batches likewise)."""
        n = len(self.source)
        order = range(n)
        if shuffle:  # seeded as the permutations of arrays are (engine.data)
            g = torch.Generator().manual_seed(seed * 1_000_003 + data_pass)
            order = torch.randperm(n, generator=g).tolist()
        end = getattr(self.source, "on_epoch_end", None)  # Keras's PyDataset protocol
        for k, i in enumerate(order):
            batch = self.source[i]
            if k == n - 1 and callable(end):  # before the yield: a reader stops at the last
                end()
            yield batch


def _is_batch(item) -> bool:
    """(x, y) or (x, y, sample_weight) with array-like parts, not a row of numbers."""
    return isinstance(item, (tuple, list)) and len(item) in (2, 3) and \
        not isinstance(item[0], (bool, int, float, np.number)) and \
        (hasattr(item[0], "shape") or isinstance(item[0], (tuple, list, dict)))


def as_batches(x):
    """A BatchStream for `x` given without y when it is a list of (x, y[, sample_weight])
    batches, a PyDataset-like sequence of them (`__len__` and `__getitem__`, no `shape`) or
    any other re-iterable of them (a class whose `__iter__` starts again each time, as a
    tf.data.Dataset does); else None. All are read again every pass."""
    from collections.abc import Mapping, Set
    from torch.utils.data import DataLoader, Dataset
    if isinstance(x, list):
        return BatchStream(x) if x and all(_is_batch(b) for b in x) else None
    if isinstance(x, (tuple, Mapping, Set, range, str, bytes, Dataset, DataLoader)) or \
            hasattr(x, "shape") or hasattr(x, "__array__"):
        return None
    if hasattr(x, "__len__") and hasattr(x, "__getitem__"):
        return BatchStream(Sequence(x))
    if callable(getattr(type(x), "__iter__", None)):
        return BatchStream(x)
    return None


def read_all(source, batch_size: int, steps: int | None) -> tuple:
    """(x, y, sample_weight) of the first `steps` batches of a stream source (all of them
    for None), concatenated: a stream as arrays, for validation."""
    window = Window(0, 0, steps, batch_size, rows=lambda n: (0, n), what="validation")
    parts = [batch for _, batch in source.batches(window)]
    if not parts:
        raise ValueError("validation_data gave no batches; pass at least one")
    joined = [_concat([p[k] for p in parts]) for k in range(3)]
    return tuple(joined)


def _concat(parts: list):
    """One part of many batches joined along the samples (tuples column by column, dicts
    key by key)."""
    if parts[0] is None:
        return None
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    if isinstance(parts[0], tuple):
        return [_concat(list(column)) for column in zip(*parts)]
    return torch.cat(parts)


_BATCH_SAMPLER_RANKS = (
    "a DataLoader with a custom batch_sampler is read batch by batch, as Keras reads it, on "
    "one process only: its batches (of varying sizes, often random) could not be split the "
    "same way on every rank. Fit on one process, or give the DataLoader a sampler= and "
    "batch_size= instead (each rank then takes its share of every batch)")


def as_stream(x):
    """The stream source for `x` when fit should read it in order, else None.

    Generators and iterators become a BatchStream (each item a global batch), as does a
    DataLoader over an IterableDataset (its batches, its workers) or with a custom
    batch_sampler (its batches, one process only); a torch IterableDataset becomes a
    SampleStream. Sources already built (`bigtrain.data.files(...)`) pass as is.
    """
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset
    if getattr(x, "is_bigtrain_stream", False):
        return x
    if isinstance(x, DataLoader):
        if isinstance(x.dataset, IterableDataset):
            return BatchStream(x)
        if x.batch_sampler is not None and type(x.batch_sampler) is not BatchSampler:
            return BatchStream(x, one_rank=_BATCH_SAMPLER_RANKS)
        return None
    if isinstance(x, IterableDataset):
        return SampleStream(x)
    if isinstance(x, (torch.Tensor, np.ndarray, list, tuple, dict, str, bytes)):
        return None
    try:
        is_iterator = iter(x) is x
    except TypeError:
        return None
    return BatchStream(x) if is_iterator else None
