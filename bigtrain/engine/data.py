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

from bigtrain.data.parts import by_name, moved, rows_of
from bigtrain.engine.data_order import LoaderOrder, epoch_permutation


def as_tensor_source(a, double: bool = False):
    """Keep numpy memmaps as they are (read lazily); turn other arrays into torch tensors
    without copying where possible. float64 (numpy or torch) becomes float32, Keras's
    floatx, as Keras casts its inputs: float64 would double the work, and float64 targets
    or weights would make the loss and metrics float64. `double` (a float64 model, see
    keeps_double): float64 stays, so no value is rounded through float32."""
    if isinstance(a, torch.Tensor):
        return a.float() if a.dtype == torch.float64 and not double else a
    if isinstance(a, np.memmap):
        return a
    arr = np.asarray(a)
    if arr.dtype == np.float64 and not double:
        arr = arr.astype(np.float32)  # Keras's floatx; float64 would double the work
    elif not arr.flags.writeable:
        arr = arr.copy()  # torch tensors must not alias read-only memory
    return torch.from_numpy(np.ascontiguousarray(arr))


@dataclass(frozen=True)
class InputSpec:
    """What a model's Input declares about one input, which every batch is made to meet.

    Attributes:
        name: the input's name, for messages.
        dtype: batches are cast to it, as Keras casts inputs to the Input's dtype (ints,
            bools and uint8 become float32 for a float32 Input; an Input(dtype="int64") of
            token ids stays integer). None (a plain torch module): float64 becomes
            `floats`, other dtypes stay.
        shape: per-sample shape, or None (not checked). A batch of one rank less whose
            missing last axis is 1 gains it (Keras's rank adjustment: (n,) for (None, 1)).
        floats: with dtype None, a plain module's weights' float dtype. float32: float64
            inputs become float32, other floats stay (Keras's floatx). Any other (a module
            made `.double()`, `.half()`): every float input takes it, as Keras's layers cast
            inputs to their dtype (float32 inputs to a float64 Linear stop at its matmul).
    """
    name: str = "x"
    dtype: torch.dtype | None = None
    shape: tuple | None = None
    floats: torch.dtype = torch.float32

    def fit(self, t: torch.Tensor) -> torch.Tensor:
        """Batch `t` in this input's dtype and rank; a clear error where its shape differs."""
        if not isinstance(t, torch.Tensor):  # a dict or object the module itself reads
            return t
        if self.shape is not None:
            shape = tuple(self.shape)
            if t.dim() == len(shape) and shape and shape[-1] == 1:
                t = t.unsqueeze(-1)
            if tuple(t.shape[1:]) != shape:
                raise ValueError(
                    f"input {self.name!r} expects samples of shape {shape} (batch shape "
                    f"(None, {', '.join(map(str, shape))})), got a batch of shape "
                    f"{tuple(t.shape)}; make the data's samples match the model's Input, "
                    "or change Input(shape=...)")
        if self.dtype is None:
            cast = t.is_floating_point() and t.dtype != self.floats and \
                (t.dtype == torch.float64 or self.floats != torch.float32)
            return t.to(self.floats) if cast else t
        return t if t.dtype == self.dtype else t.to(self.dtype)


def fit_inputs(x, specs: list | InputSpec | None):
    """An input batch (a tensor, a tuple for several inputs, or a dict keyed by the inputs'
    names, as Keras takes one) made to meet `specs` (see InputSpec; None: float64 becomes
    float32 only, and a dict goes to the module as it is; one InputSpec: a plain module's
    rule for its float inputs, for any number of them)."""
    plain = specs if isinstance(specs, InputSpec) else InputSpec()
    specs = None if isinstance(specs, InputSpec) else specs
    x = by_name(x, None if specs is None else [s.name for s in specs], "x", "inputs")
    if isinstance(x, (tuple, list)):
        specs = specs or [plain] * len(x)
        if len(specs) != len(x):
            raise ValueError(f"the model takes {len(specs)} input(s) "
                             f"({', '.join(s.name for s in specs)}), got a batch of {len(x)}"
                             " (a Dataset item's x written as a Python list collates into one "
                             "tensor per element: return it as a numpy array or tensor)")
        return tuple(s.fit(t) for s, t in zip(specs, x))
    if specs is not None and len(specs) != 1:
        raise ValueError(f"the model takes {len(specs)} inputs "
                         f"({', '.join(s.name for s in specs)}), got a batch of one tensor; "
                         "give each batch's x as a tuple of one tensor per input")
    return (specs[0] if specs else plain).fit(x)


def keeps_double(specs: list | InputSpec | None) -> bool:
    """Whether float64 data stays float64 (inputs, targets, sample weights): a float64
    model's (a plain module made `.double()`, or a float64 Input), whose loss and metrics
    then run in float64 too; else float64 becomes float32, Keras's floatx."""
    if isinstance(specs, InputSpec):
        return specs.floats == torch.float64
    return any(s.dtype == torch.float64 for s in specs or ())


def fit_targets(y, outputs: list | None):
    """A target batch given as a dict keyed by the model's output names (`outputs`; None:
    not known) as the tensor or tuple, in output order, that the losses read."""
    return by_name(y, outputs, "y", "outputs")


def _to(t: torch.Tensor, device) -> torch.Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


def gather(a, idx: torch.Tensor, double: bool = False) -> torch.Tensor:
    """Rows `idx` of `a` (a tensor or a memmap) as a tensor (`double`: see as_tensor_source)."""
    if isinstance(a, torch.Tensor):
        if idx.device != a.device:  # data kept on an accelerator, indices drawn on the host
            idx = idx.to(a.device)
        return a.index_select(0, idx) if idx.numel() != a.shape[0] else a[idx]
    rows = np.asarray(a[np.sort(idx.numpy())]) if len(idx) else np.asarray(a[:0])
    order = np.argsort(np.argsort(idx.numpy()))  # back to the requested order
    out = torch.from_numpy(np.ascontiguousarray(rows[order]))
    return out.float() if out.dtype == torch.float64 and not double else out


def _pick(arrays: list, idx: torch.Tensor, device, double: bool):
    """Rows `idx` of each array on `device`: one array bare, several as a tuple."""
    if len(arrays) == 1:
        return _to(gather(arrays[0], idx, double), device)
    return tuple(_to(gather(a, idx, double), device) for a in arrays)


@dataclass
class ArrayData:
    """Inputs, targets and sample weights that share their first (sample) axis.
    `inputs`: per input, the InputSpec its batches are made to meet (None: float64 inputs
    become float32, nothing else changes; one InputSpec: a plain module's, see fit_inputs)."""
    xs: list
    ys: list
    sample_weight: object | None = None
    inputs: list | InputSpec | None = None

    def __len__(self) -> int:
        return int(self.xs[0].shape[0])

    def take(self, idx: torch.Tensor, device) -> tuple:
        """(inputs, targets, sample_weight) for rows `idx`, on `device`; single arrays are
        returned bare and several as a tuple."""
        double = keeps_double(self.inputs)
        sw = None if self.sample_weight is None else \
            gather(self.sample_weight, idx, double).to(device)
        x = fit_inputs(_pick(self.xs, idx, device, double), self.inputs)
        return x, _pick(self.ys, idx, device, double) if self.ys else None, sw

    def pass_order(self, data_pass: int, seed: int, shuffle: bool) -> torch.Tensor:
        """The sample indices one pass trains on, in order."""
        return epoch_permutation(len(self), seed, data_pass, shuffle)

    def split(self, fraction: float) -> tuple["ArrayData", "ArrayData"]:
        """Keras's validation_split: the last `fraction` of the samples, before shuffling."""
        n = len(self)
        cut = split_index(n, fraction)
        head = lambda arrays: [a[:cut] for a in arrays]  # noqa: E731
        tail = lambda arrays: [a[cut:] for a in arrays]  # noqa: E731
        sw = self.sample_weight
        return (ArrayData(head(self.xs), head(self.ys), None if sw is None else sw[:cut],
                          self.inputs),
                ArrayData(tail(self.xs), tail(self.ys), None if sw is None else sw[cut:],
                          self.inputs))


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


_PARTS = ("x", "y", "sample_weight")  # what a Dataset's item holds, in order


class DatasetData(ArrayData):
    """A map-style torch `Dataset` whose items are `(x, y)` or `(x, y, sample_weight)`
    (x and y may be tuples for several inputs/outputs). Batches are collated from the
    items of each index batch, so the dataset is never loaded whole; with
    `loading.workers > 0` worker processes collate them ahead of the step. `order`: a
    DataLoader's own order (None: fit's shuffle decides); `inputs`: see ArrayData;
    `outputs`: the model's output names, which a dict y is keyed by (None: not known)."""

    def __init__(self, dataset, loading: Loading | None = None, order: LoaderOrder | None = None,
                 inputs: list | None = None, outputs: list | None = None):
        self.dataset, self.outputs = dataset, outputs
        self.loading = loading or Loading()
        self.order = order
        first = dataset[0]
        if not isinstance(first, (tuple, list)) or len(first) not in (2, 3):
            raise ValueError("a Dataset passed to fit must return (x, y) or (x, y, sample_weight) "
                             f"items; item 0 is a {type(first).__name__}")
        self.first = first
        self._loader = None
        self._drawn = None  # (data pass, seed, indices): a sampler is drawn once per pass
        super().__init__(xs=[], ys=[], sample_weight=None, inputs=inputs)
        if self.loading.collate is None:  # (a loader's own collate_fn runs in its workers)
            # item 0 as a batch of one, through the whole path: a part no model takes (text),
            # a dict of other names or a wrong shape is refused here, before any rank starts
            self.finish(_Collate(None)([first]), torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_count(self) -> int:
        """Samples one pass trains on (a loader's sampler and drop_last decide)."""
        return len(self) if self.order is None else self.order.count(len(self))

    def pass_order(self, data_pass: int, seed: int, shuffle: bool) -> torch.Tensor:
        if self.order is None:
            return epoch_permutation(len(self), seed, data_pass, shuffle)
        if self._drawn is None or self._drawn[:2] != (data_pass, seed):
            self._drawn = (data_pass, seed, self.order.indices(len(self), data_pass, seed))
        return self._drawn[2]

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
            items = [rows_of(part, 0, 0) for part in default_collate([self.first])]
        if not isinstance(items, (tuple, list)) or len(items) not in (2, 3):
            raise ValueError(f"the DataLoader's collate_fn gave a {type(items).__name__}; fit "
                             "needs each batch as (x, y) or (x, y, sample_weight)")
        # y and sample_weight as arrays give them (as_tensor_source): float64 as float32
        double = keeps_double(self.inputs)
        parts = [moved(part if what == "x" else _floatx(part, double), device, what)
                 for part, what in zip(items, _PARTS)]
        x, y = fit_inputs(parts[0], self.inputs), fit_targets(parts[1], self.outputs)
        return x, y, parts[2] if len(parts) == 3 else None

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
        if self.order is not None and (self.order.sampler is not None or self.order.drop_last):
            raise ValueError(f"validation_split={fraction} cannot split a DataLoader whose "
                             "sampler picks the samples (or that drops the last batch): pass "
                             "validation_data=... instead (as Keras, which splits arrays "
                             "only)")
        n = len(self)
        cut = split_index(n, fraction)
        return (DatasetData(Subset(self.dataset, range(cut)), self.loading, self.order,
                            self.inputs, self.outputs),
                DatasetData(Subset(self.dataset, range(cut, n)), inputs=self.inputs,
                            outputs=self.outputs))


def _floatx(part, double: bool = False):
    """A collated batch part with its float64 tensors as float32, Keras's floatx (torch's
    collate makes float64 of Python floats and float64 arrays), unless `double` (a float64
    model); tuples, lists and dicts value by value, anything else as it is."""
    if isinstance(part, torch.Tensor):
        return part.float() if part.dtype == torch.float64 and not double else part
    if isinstance(part, dict):
        return {k: _floatx(v, double) for k, v in part.items()}
    if isinstance(part, (tuple, list)):
        return tuple(_floatx(p, double) for p in part)  # as `moved` gives them
    return part


def _worker_context():
    """Start method for loader workers: fork where the platform has it (nothing re-imports
    the user's script, which may have no `if __name__ == "__main__":` guard), else spawn."""
    import multiprocessing
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
