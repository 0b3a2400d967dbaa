"""What evaluate(steps=...) and predict(steps=...) read, as Keras reads it: arrays cut to
their first batches; generators, PyDataset-like sequences, lists of batches and some
DataLoaders read batch by batch and joined into arrays (`first_batches`).

Example:
    x, y, sw, batch_size = first_batches(generator, None, None, 32, steps=10)
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from bigtrain.api.inputs import loader_batch_size


def _is_iterator(x) -> bool:
    """A generator or other one-pass iterator of batches (not arrays, datasets, loaders)."""
    if isinstance(x, (np.ndarray, torch.Tensor, list, tuple, dict, str, bytes)) or x is None:
        return False
    try:
        return iter(x) is x
    except TypeError:
        return False


def _join(parts: list):
    """Batches (arrays, or lists/tuples/dicts of them) joined along the sample axis."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: _join([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return [_join([p[i] for p in parts]) for i in range(len(first))]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    return np.concatenate([np.asarray(p) for p in parts])


def _rows_of(x) -> int:
    """Samples in one batch (an array, or a list/tuple/dict of them)."""
    if isinstance(x, dict):
        x = next(iter(x.values()))
    elif isinstance(x, (list, tuple)):
        x = x[0]
    return int(x.shape[0]) if hasattr(x, "shape") else len(x)


def _cut(a, n: int):
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: v[:n] for k, v in a.items()}
    if isinstance(a, (list, tuple)):
        return [v[:n] for v in a]
    return a[:n]


def _batches_of(x, y, targets: bool):
    """An iterator over the batches of `x` when evaluate/predict read it batch by batch
    here, as Keras iterates it, else None (arrays, and the Datasets and DataLoaders of
    (x, y) items that prepare_data reads by index): a generator; a PyDataset-like
    sequence (`__len__`, `__getitem__`) or list of (x, y) batches; a DataLoader over an
    IterableDataset, or, for predict, one whose items are inputs alone."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset
    from bigtrain.data.streams import as_batches
    if _is_iterator(x):
        return x
    if y is not None or x is None or isinstance(x, (np.ndarray, torch.Tensor, dict, tuple)) \
            or hasattr(x, "shape"):
        return None
    if isinstance(x, DataLoader):
        inputs_only = not targets and not _pair_items(x.dataset)
        return iter(x) if isinstance(x.dataset, IterableDataset) or inputs_only else None
    if isinstance(x, Dataset) or as_batches(x) is None:
        return None
    if hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, list):
        return (x[i] for i in range(len(x)))  # a PyDataset: by index, as Keras reads it
    return iter(x)


def _pair_items(dataset) -> bool:
    """The map-style dataset's items are (x, y[, sample_weight]), not inputs alone."""
    if isinstance(dataset, torch.utils.data.IterableDataset) or len(dataset) == 0:
        return True
    item = dataset[0]
    return isinstance(item, (tuple, list)) and len(item) in (2, 3)


def first_batches(x, y, sample_weight, batch_size: int, steps: int | None,
                  targets: bool = True):
    """(x, y, sample_weight, batch_size) limited to Keras's `steps` batches: arrays cut to
    their first `steps * batch_size` samples; a generator's first `steps` batches (all of
    them when steps is None), each `(x, y[, sample_weight])` (or `x` alone for predict),
    joined into arrays and read in batches of its own size; a DataLoader in its own batches
    (Keras iterates it, whatever batch_size says).
    """
    batch_size = loader_batch_size(x) or batch_size
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)
                              or steps <= 0):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    batches = _batches_of(x, y, targets)
    if batches is not None:
        items = list(itertools.islice(batches, steps)) if steps else list(batches)
        if not items:
            raise ValueError("the generator yielded no batches")
        if not targets:  # predict: x alone, or (x, ...) whose targets it ignores
            xs = [item[0] if isinstance(item, tuple) else item for item in items]
            return _join(xs), None, None, batch_size or _rows_of(xs[0])
        rows = [tuple(item) + (None,) * (3 - len(item)) for item in items]
        columns = [_join([r[i] for r in rows]) for i in range(3)]
        return (*columns, batch_size or _rows_of(rows[0][0]))
    if steps is None:
        return x, y, sample_weight, batch_size
    if not isinstance(x, (np.ndarray, torch.Tensor, list, tuple, dict)):
        raise ValueError(f"steps= limits arrays and generators; got {type(x).__name__}: "
                         "iterate over it and pass the first batches as arrays")
    n = steps * batch_size
    return _cut(x, n), _cut(y, n), _cut(sample_weight, n), batch_size
