"""Batches from arrays without copying the dataset: each epoch draws an index permutation
and gathers one batch at a time (memory-mapped `.npy` files are read only where indexed).

`ArrayData` holds the inputs, targets and optional sample weights as lists of arrays that
share their first axis. `GlobalBatches` yields, for one epoch, the indices of each global
batch and this rank's share of it.

Uneven batches: the last global batch of an epoch may be smaller than `batch_size`; it is
kept (no sample dropped or repeated) and split as evenly as possible across ranks; a rank
whose share is empty still joins the collectives with a zero-weight step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def as_tensor_source(a):
    """Keep numpy memmaps as they are (read lazily); turn other arrays into torch tensors
    without copying where possible."""
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.memmap):
        return a
    arr = np.asarray(a)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)  # Keras's floatx; float64 would double the work
    elif not arr.flags.writeable:
        arr = arr.copy()  # torch tensors must not alias read-only memory
    return torch.from_numpy(np.ascontiguousarray(arr))


def _to(t: torch.Tensor, device) -> torch.Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


def gather(a, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` of `a` (a tensor or a memmap) as a tensor."""
    if isinstance(a, torch.Tensor):
        if idx.device != a.device:  # data kept on an accelerator, indices drawn on the host
            idx = idx.to(a.device)
        return a.index_select(0, idx) if idx.numel() != a.shape[0] else a[idx]
    rows = np.asarray(a[np.sort(idx.numpy())]) if len(idx) else np.asarray(a[:0])
    order = np.argsort(np.argsort(idx.numpy()))  # back to the requested order
    out = torch.from_numpy(np.ascontiguousarray(rows[order]))
    return out.float() if out.dtype == torch.float64 else out


def _pick(arrays: list, idx: torch.Tensor, device):
    """Rows `idx` of each array on `device`: one array bare, several as a tuple."""
    if len(arrays) == 1:
        return _to(gather(arrays[0], idx), device)
    return tuple(_to(gather(a, idx), device) for a in arrays)


@dataclass
class ArrayData:
    """Inputs, targets and sample weights that share their first (sample) axis."""
    xs: list
    ys: list
    sample_weight: object | None = None

    def __len__(self) -> int:
        return int(self.xs[0].shape[0])

    def take(self, idx: torch.Tensor, device) -> tuple:
        """(inputs, targets, sample_weight) for rows `idx`, on `device`; single arrays are
        returned bare and several as a tuple."""
        sw = None if self.sample_weight is None else gather(self.sample_weight, idx).to(device)
        return _pick(self.xs, idx, device), _pick(self.ys, idx, device) if self.ys else None, sw

    def split(self, fraction: float) -> tuple["ArrayData", "ArrayData"]:
        """Keras's validation_split: the last `fraction` of the samples, before shuffling."""
        n = len(self)
        cut = split_index(n, fraction)
        head = lambda arrays: [a[:cut] for a in arrays]  # noqa: E731
        tail = lambda arrays: [a[cut:] for a in arrays]  # noqa: E731
        sw = self.sample_weight
        return (ArrayData(head(self.xs), head(self.ys), None if sw is None else sw[:cut]),
                ArrayData(tail(self.xs), tail(self.ys), None if sw is None else sw[cut:]))


def split_index(n: int, fraction: float) -> int:
    """Training rows kept by Keras's validation_split: floor(n * (1 - fraction)), the same
    float expression as Keras, so both keep the same rows (n=10, 0.25: 7, not 8).

    Example:
        split_index(10, 0.25)  # 7: rows [0, 7) train, [7, 10) validate
    """
    cut = int(math.floor(n * (1.0 - fraction)))
    if cut <= 0 or cut >= n:
        raise ValueError(f"validation_split={fraction} leaves no training or no validation "
                         f"samples out of {n}; use a value in (0, 1) that keeps both")
    return cut


def sample_count(data) -> int | None:
    """Samples in one pass over `data`, or None for a stream whose length is unknown."""
    return data.sample_count() if hasattr(data, "sample_count") else len(data)


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The same permutation on every rank: seeded by (seed, epoch), not by global RNG state."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def shard_bounds(count: int, index: int, shards: int) -> tuple[int, int]:
    """[start, stop) of shard `index` when `count` items split as evenly as possible."""
    base, extra = divmod(count, shards)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def global_batches(perm: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Slices of the epoch permutation, one per global batch (the last may be smaller):
    views made in one call."""
    return perm.split(batch_size)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def epoch_window(epoch: int, steps_per_epoch: int | None, batches: int) -> tuple[int, int, int]:
    """(data pass, first batch, stop batch) that epoch `epoch` trains on.

    Without `steps_per_epoch` every epoch is one pass. With it, epochs take consecutive
    slices of one pass, as Keras does: an epoch stops early where its pass runs out, and the
    next epoch starts a new pass (a new permutation). A function of the epoch alone, so a
    resumed run finds the same window.

    Example:
        >>> [epoch_window(e, 2, 3) for e in range(3)]
        [(0, 0, 2), (0, 2, 3), (1, 0, 2)]
    """
    if steps_per_epoch is None:
        return epoch, 0, batches
    data_pass, start = 0, 0
    for _ in range(epoch):
        start += min(steps_per_epoch, batches - start)
        if start >= batches:
            data_pass, start = data_pass + 1, 0
    return data_pass, start, min(batches, start + steps_per_epoch)


@dataclass(frozen=True)
class Loading:
    """How a map-style Dataset's items are loaded.

    Attributes:
        workers: background worker processes (0: in the training process, at the step).
        prefetch: batches each worker prepares ahead (torch's `prefetch_factor`).
        pin_memory: page-lock host batches for faster copies to a GPU (ignored on CPU).
        collate: a DataLoader's own `collate_fn`, or None for torch's default.
    """
    workers: int = 0
    prefetch: int = 2
    pin_memory: bool = False
    collate: object = None

    def __post_init__(self):
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (background loading processes), "
                             f"got {self.workers!r}")
        if not isinstance(self.prefetch, int) or isinstance(self.prefetch, bool) or \
                self.prefetch < 1:
            raise ValueError(f"prefetch must be an integer >= 1 (batches each worker loads "
                             f"ahead), got {self.prefetch!r}")


class _Collate:
    """Collate the items of one index list (run in loader workers): (items, None) or, for an
    empty share, (None, None) so the training process builds zero rows itself."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        from torch.utils.data import default_collate
        if not items:
            return None
        return (self.collate or default_collate)(items)


class _IndexLists:
    """A batch sampler whose lists are swapped each epoch (the loader's workers persist)."""

    def __init__(self):
        self.lists: list = []

    def __iter__(self):
        return iter(self.lists)

    def __len__(self):
        return len(self.lists)


class DatasetData(ArrayData):
    """A map-style torch `Dataset` whose items are `(x, y)` or `(x, y, sample_weight)`
    (x and y may be tuples for several inputs/outputs). Batches are collated from the
    items of each index batch, so the dataset is never loaded whole; with
    `loading.workers > 0` worker processes collate them ahead of the step."""

    def __init__(self, dataset, loading: Loading | None = None):
        self.dataset = dataset
        self.loading = loading or Loading()
        first = dataset[0]
        if not isinstance(first, (tuple, list)) or len(first) not in (2, 3):
            raise ValueError("a Dataset passed to fit must return (x, y) or (x, y, sample_weight) "
                             f"items; item 0 is a {type(first).__name__}")
        self.first = first
        self._loader = None
        super().__init__(xs=[], ys=[], sample_weight=None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_loader"] = None  # worker processes stay with the process that started them
        return state

    def take(self, idx: torch.Tensor, device) -> tuple:
        fetch = getattr(self.dataset, "__getitems__", None)  # torch's batched-read protocol
        ids = idx.tolist()
        items = _Collate(self.loading.collate)(fetch(ids) if fetch and ids else
                                               [self.dataset[i] for i in ids])
        return self.finish(items, device)

    def finish(self, items, device) -> tuple:
        """(x, y, sample_weight) on `device` from collated items (None: an empty share)."""
        from torch.utils.data import default_collate
        if items is None:  # an empty share: zero rows shaped like the first item
            items = [t[:0] for t in default_collate([self.first])]
        moved = [tuple(t.to(device, non_blocking=True) for t in part)
                 if isinstance(part, (list, tuple)) else part.to(device, non_blocking=True)
                 for part in items]
        x, y = moved[0], moved[1]
        sw = moved[2] if len(moved) == 3 else None
        if isinstance(x, torch.Tensor) and x.dtype == torch.float64:
            x = x.float()
        return x, y, sw

    def loader_for(self, index_lists: list):
        """A DataLoader (kept across epochs: its workers persist) that collates the items of
        each list in `index_lists`, in order, in `loading.workers` background processes."""
        from torch.utils.data import DataLoader
        if self._loader is None:
            sampler = _IndexLists()
            self._loader = DataLoader(
                self.dataset, batch_sampler=sampler, collate_fn=_Collate(self.loading.collate),
                num_workers=self.loading.workers, prefetch_factor=self.loading.prefetch,
                pin_memory=self.loading.pin_memory and torch.cuda.is_available(),
                persistent_workers=True, multiprocessing_context=_worker_context())
        self._loader.batch_sampler.lists = index_lists
        return self._loader

    def split(self, fraction: float):
        from torch.utils.data import Subset
        n = len(self)
        cut = split_index(n, fraction)
        return (DatasetData(Subset(self.dataset, range(cut)), self.loading),
                DatasetData(Subset(self.dataset, range(cut, n))))


def _worker_context():
    """Start method for loader workers: fork where the platform has it (nothing re-imports
    the user's script, which may have no `if __name__ == "__main__":` guard), else spawn."""
    import multiprocessing
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
