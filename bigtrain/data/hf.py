"""Hugging Face `datasets` straight into fit: column names mapped to inputs and targets.

    model.fit(load_dataset("parquet", data_files="data/*.parquet")["train"], y="label")

A `datasets.Dataset` (memory-mapped Arrow) becomes a map-style torch Dataset that reads
whole batches at once (`__getitems__`), so fit shuffles and shards it like arrays and its
`workers=` apply. A `datasets.IterableDataset` (streaming) becomes a stream of samples that
every rank reads in order, keeping its rows of each global batch.

Columns: `y` names the target column(s) (default "label" or "labels"); the inputs are the
columns named like the model's inputs when it has named inputs and all are present, else
every other column (one column as it is, several numeric ones stacked into (n, k)). A null
in those columns is refused, naming it (numpy format reads it as NaN): before training for a
Dataset, at its row for a stream.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from bigtrain.data.parts import to_tensor
from bigtrain.data.streams import SampleStream


def is_hf(x) -> bool:
    """Whether `x` is a Hugging Face datasets.Dataset or IterableDataset (without importing
    datasets when it is not installed)."""
    return type(x).__module__.startswith("datasets.") and hasattr(x, "column_names")


def columns_for(names: list[str], y, input_names: list[str] | None) -> tuple[list, list]:
    """(input columns, target columns) of a dataset with columns `names`."""
    if y is None:
        y = next((c for c in ("label", "labels") if c in names), None)
        if y is None:
            raise ValueError(f"name the target column of the Hugging Face dataset: fit(ds, "
                             f"y='<column>'); its columns are {names}")
    ys = [y] if isinstance(y, str) else list(y)
    missing = [c for c in ys if c not in names]
    if missing:
        raise ValueError(f"target column {missing[0]!r} is not in the dataset; its columns "
                         f"are {names}")
    if input_names and all(n in names for n in input_names):
        return list(input_names), ys
    xs = [c for c in names if c not in ys]
    if not xs:
        raise ValueError(f"the dataset has no input columns besides the targets {ys}")
    return xs, ys


def _assemble(batch: dict, cols: list[str], stack: bool):
    """Columns of a batch (dict of arrays) as one tensor, a stacked (n, k) tensor, or a
    tuple of tensors (one per model input)."""
    parts = [to_tensor(np.asarray(batch[c])) for c in cols]
    if len(parts) == 1:
        return parts[0]
    if stack:
        return torch.stack([p.float() for p in parts], dim=1)
    return tuple(parts)


class HFColumns(Dataset):
    """A datasets.Dataset as (x, y) items; `__getitems__` reads a batch in one Arrow take."""

    def __init__(self, ds, xs: list[str], ys: list[str], stack: bool):
        _refuse_nulls(ds, [*xs, *ys])
        self.ds, self.xs, self.ys, self.stack = ds.with_format("numpy"), xs, ys, stack

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list) -> list:
        batch = self.ds[list(map(int, indices))]
        x, y = _assemble(batch, self.xs, self.stack), _assemble(batch, self.ys, False)
        return list(zip(_rows(x), _rows(y)))


def _null_count(column) -> int:
    """Nulls of an Arrow column, inside its lists too (a null list counts once)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    count = column.null_count
    while pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or \
            pa.types.is_fixed_size_list(column.type):
        column = pc.list_flatten(column)
        count += column.null_count
    return count


def _null_error(name: str, count: int, where: str) -> ValueError:
    return ValueError(f"column {name!r} of the Hugging Face dataset has {count} null "
                      f"(missing) value(s){where}: a null has no number to train on (numpy "
                      "format reads it as NaN, an integer label then as -2**63). Fill or drop "
                      f"them first, e.g. ds.filter(lambda r: r[{name!r}] is not None)")


def _refuse_nulls(ds, cols: list[str]) -> None:
    """Refuse nulls in the columns fit reads, before training: the table's own counts (no
    data read), and, where the dataset selects rows of a bigger table, those rows only."""
    for name in cols:
        if not _null_count(ds.data.column(name)):
            continue
        count = _null_count(ds.data.column(name)) if ds._indices is None else \
            _null_count(ds.with_format("arrow")[name])
        if count:
            raise _null_error(name, count, "")


def _has_null(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_null(v) for v in value)
    return value is None


def _rows(part):
    if isinstance(part, tuple):
        return list(zip(*part))
    return list(part)


class HFStream:
    """A datasets.IterableDataset as re-iterable (x, y) samples."""

    def __init__(self, ds, xs: list[str], ys: list[str], stack: bool):
        self.ds, self.xs, self.ys, self.stack = ds, xs, ys, stack

    def __iter__(self):
        for i, row in enumerate(self.ds):
            bad = next((c for c in (*self.xs, *self.ys) if _has_null(row[c])), None)
            if bad is not None:
                raise _null_error(bad, 1, f" (in row {i} of the stream)")
            batch = {k: [v] for k, v in row.items()}
            x, y = _assemble(batch, self.xs, self.stack), _assemble(batch, self.ys, False)
            yield _rows(x)[0], _rows(y)[0]


def from_hf(ds, y, input_names: list[str] | None):
    """A Hugging Face dataset as what fit reads: a map-style Dataset or a SampleStream."""
    names = list(ds.column_names or [])
    xs, ys = columns_for(names, y, input_names)
    stack = not (input_names and len(input_names) == len(xs) > 1)
    if hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        return HFColumns(ds, xs, ys, stack)
    return SampleStream(HFStream(ds, xs, ys, stack))
