"""Parquet / Arrow / Feather files larger than memory, read lazily and sharded per rank.

    from bigtrain.data import files
    model.fit(files("data/*.parquet", x=["f0", "f1"], y="label"), batch_size=256, epochs=3)

The order of one pass (the same on every rank count, seeded by `seed` and the pass):
1. the row groups of all files (Arrow record batches for .arrow/.feather) are shuffled;
2. consecutive row groups form blocks of at least `buffer_rows` rows, and the rows of each
   block are shuffled (the shuffle buffer);
3. global batch k is rows [k * batch_size, (k + 1) * batch_size) of that sequence.
Row group j of the shuffled list belongs to rank j % ranks: each rank reads only its own row
groups (a block at a time, the next one in a background thread) and trains on its rows of
every global batch. Loss weights follow the rows each rank holds, so the gradient is the
global batch's whatever the split; a position (epoch, batch) names the same samples under
any number of ranks, which is what checkpoints save and resumes restore.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from bigtrain.data.file_layout import (PARQUET, expand, null_error, read_layout,
                                       sample_shape)
from bigtrain.data.streams import StreamEnded, Window

def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("bigtrain.data.files needs pyarrow: pip install 'bigtrain[data]'") \
            from None
    import pyarrow
    return pyarrow


class FileSource:
    """Columns of many files as a stream for fit (see the module docstring); made by
    `files(...)`. Picklable: ranks reopen the files themselves."""

    is_bigtrain_stream = True

    def __init__(self, paths: list[str], x: list[str], y: str | None, sample_weight: str | None,
                 buffer_rows: int):
        self.paths, self.x, self.y, self.weight = paths, x, y, sample_weight
        self.buffer_rows = buffer_rows
        self.units = read_layout(paths, self.columns())
        self.shape = sample_shape(paths[0], x)
        self.total = sum(u.rows for u in self.units)

    def samples(self) -> int:
        return self.total

    def steps(self, batch_size: int) -> int:
        return -(-self.total // batch_size)

    def sample_shape(self) -> tuple | None:
        """The shape of one sample of x, from the first file's schema (None: a list column
        of varying length, known only once read)."""
        return self.shape

    # ---- the order of one pass ------------------------------------------------------------
    def blocks(self, data_pass: int, seed: int, shuffle: bool) -> list[list[int]]:
        """Unit positions (into the pass's unit order) of each shuffle block."""
        out, block, rows = [], [], 0
        for j, unit in enumerate(self.unit_order(data_pass, seed, shuffle)):
            block.append(j)
            rows += self.units[unit].rows
            if rows >= self.buffer_rows:
                out.append(block)
                block, rows = [], 0
        return out + ([block] if block else [])

    def unit_order(self, data_pass: int, seed: int, shuffle: bool) -> list[int]:
        if not shuffle:
            return list(range(len(self.units)))
        g = torch.Generator().manual_seed(seed * 1_000_003 + data_pass)
        return torch.randperm(len(self.units), generator=g).tolist()

    def block_order(self, rows: int, data_pass: int, seed: int, shuffle: bool,
                    block: int) -> np.ndarray:
        """The shuffled order of a block's rows (row ids within the block)."""
        if not shuffle:
            return np.arange(rows)
        g = torch.Generator().manual_seed((seed * 1_000_003 + data_pass) * 7919 + block)
        return torch.randperm(rows, generator=g).numpy()

    # ---- reading ----------------------------------------------------------------------------
    def columns(self) -> list[str]:
        return [*self.x, *filter(None, (self.y, self.weight))]

    def read_units(self, units: list[int]) -> dict[str, np.ndarray]:
        """The needed columns of `units` (indices into self.units), concatenated; zero rows
        (with the columns' types) for no units."""
        if not units:  # one row read, so that a list column keeps its width
            unit = self.units[0]
            table = _read_unit(self.paths[unit.file], unit, self.columns()).slice(0, 1)
            return {name: _column(table, name, self.paths[unit.file], unit.group)[:0]
                    for name in self.columns()}
        parts: dict[str, list] = {}
        for u in units:
            path, group = self.paths[self.units[u].file], self.units[u].group
            table = _read_unit(path, self.units[u], self.columns())
            for name in table.column_names:
                parts.setdefault(name, []).append(_column(table, name, path, group))
        return {k: _joined(k, v) for k, v in parts.items()}

    def batches(self, window: Window):
        """(global rows, this rank's (x, y, sample_weight)) for every batch in `window`."""
        size, (index, shards) = window.batch_size, window.shard
        order = self.unit_order(window.data_pass, window.seed, window.shuffle)
        plan = _BlockPlan(self, order, self.blocks(window.data_pass, window.seed, window.shuffle),
                          window, index, shards)
        stop = window.stop if window.stop is not None else self.steps(size)
        with ThreadPoolExecutor(max_workers=1) as pool:  # reads the next block ahead
            for k in range(window.start, stop):
                lo, hi = k * size, min((k + 1) * size, self.total)
                if lo >= hi:
                    raise StreamEnded(f"the files hold {self.total} rows, fewer than "
                                      f"{window.what} needs (batch {k} of {size})")
                yield hi - lo, self._tensors(plan.rows(lo, hi, pool))

    def _tensors(self, cols: dict[str, np.ndarray]) -> tuple:
        feats = [cols[c] for c in self.x]
        if len(feats) == 1:  # a scalar column is one feature per row: (n, 1), as x=[name]
            one = feats[0] if feats[0].ndim > 1 else feats[0].reshape(-1, 1)
            x = torch.from_numpy(np.ascontiguousarray(one))
        else:
            x = torch.from_numpy(np.stack(feats, axis=1).astype(np.float32, copy=False))
        x = x.float() if x.dtype == torch.float64 else x
        y = None if self.y is None else _target(cols[self.y])
        w = None if self.weight is None else torch.from_numpy(
            cols[self.weight].astype(np.float32, copy=False))
        return x, y, w


def _target(col: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(col))
    return t.float() if t.dtype == torch.float64 else t


class _BlockPlan:
    """Walks the blocks of one pass for one rank: which global positions are its rows, and
    the columns of its units in the current block (read ahead by a thread)."""

    def __init__(self, source: FileSource, order: list[int], blocks: list[list[int]],
                 window: Window, index: int, shards: int):
        self.src, self.order, self.blocks, self.window = source, order, blocks, window
        self.index, self.shards = index, shards
        sizes = [sum(source.units[order[j]].rows for j in b) for b in blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.loaded: dict[int, tuple] = {}  # block -> (local ids per block row, columns)
        self.pending: dict = {}

    def _mine(self, b: int) -> list[int]:
        return [self.order[j] for j in self.blocks[b] if j % self.shards == self.index]

    def _load(self, b: int, pool):
        if b not in self.pending:
            self.pending[b] = pool.submit(self.src.read_units, self._mine(b))
        cols = self.pending.pop(b).result()
        block = self.blocks[b]
        owner = np.repeat([j % self.shards for j in block],
                          [self.src.units[self.order[j]].rows for j in block])
        local = np.full(len(owner), -1, dtype=np.int64)
        local[owner == self.index] = np.arange(int((owner == self.index).sum()))
        perm = self.src.block_order(len(owner), self.window.data_pass, self.window.seed,
                                    self.window.shuffle, b)
        self.loaded = {b: (local[perm], cols)}  # one block in memory (plus one being read)
        if b + 1 < len(self.blocks):
            self.pending[b + 1] = pool.submit(self.src.read_units, self._mine(b + 1))

    def rows(self, lo: int, hi: int, pool) -> dict[str, np.ndarray]:
        """This rank's columns for global positions [lo, hi) of the pass."""
        out: dict[str, list] = {}
        b = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            if b not in self.loaded:
                self._load(b, pool)
            ids, cols = self.loaded[b]
            a, z = lo - self.starts[b], min(hi, self.starts[b + 1]) - self.starts[b]
            take = ids[a:z]
            take = take[take >= 0]
            for name in self.src.columns():
                out.setdefault(name, []).append(cols[name][take])
            lo, b = self.starts[b] + z, b + 1
        return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in out.items()}


def _joined(name: str, parts: list[np.ndarray]) -> np.ndarray:
    """One column's row groups stacked; list columns of different lengths are refused
    (numpy's own error named no column)."""
    widths = sorted({p.shape[1:] for p in parts})
    if len(widths) > 1:
        raise ValueError(f"bigtrain.data.files: list column {name!r} holds lists of "
                         f"different lengths {[w[0] for w in widths]} in different row "
                         "groups; every sample of x needs the same length (pad or cut the "
                         "lists to one length, or use a fixed-size list column)")
    return np.concatenate(parts)


def _column(table, name: str, path: str, group: int) -> np.ndarray:
    """A column as numpy: (n,) for scalars, (n, k) for list columns of equal lengths.
    Nulls (also inside lists) are refused, naming the file: they read as NaN or -2**63."""
    import pyarrow as pa
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise null_error(name, path, group, col.null_count)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or \
            pa.types.is_fixed_size_list(col.type):
        values = _list_values(col, name, path, group)
        if len(col):
            return values.reshape(len(col), -1)
        width = col.type.list_size if pa.types.is_fixed_size_list(col.type) else 0
        return values.reshape(0, width)
    return col.to_numpy(zero_copy_only=False)


def _list_values(col, name: str, path: str, group: int) -> np.ndarray:
    """The flat values of a list column, once its lists are known to be of one length
    (a flat reshape of unequal lists moved values between rows) and free of nulls."""
    import pyarrow as pa
    import pyarrow.compute as pc
    flat = pc.list_flatten(col)
    if flat.null_count:
        raise null_error(name, path, group, flat.null_count)
    if len(col) and not pa.types.is_fixed_size_list(col.type):
        bounds = pc.min_max(pc.list_value_length(col)).as_py()
        if bounds["min"] != bounds["max"]:
            raise ValueError(f"bigtrain.data.files: list column {name!r} holds lists of "
                             f"{bounds['min']} to {bounds['max']} values in row group "
                             f"{group} of {path!r}; every sample of x needs the same "
                             "length (pad or cut the lists to one length, or use a "
                             "fixed-size list column)")
    return flat.to_numpy(zero_copy_only=False)


def _read_unit(path: str, unit, columns: list[str]):
    """One row group (record batch) of `path`, checked against the layout `files` read:
    a file rewritten since (another row count or grouping) is named, not misread."""
    pa = _pyarrow()
    if path.endswith(PARQUET):
        import pyarrow.parquet as pq
        reader = pq.ParquetFile(path)
        if unit.group < reader.num_row_groups and \
                reader.metadata.row_group(unit.group).num_rows == unit.rows:
            return reader.read_row_group(unit.group, columns=columns)
    else:
        with pa.OSFile(path) as source:  # reads this batch's buffers only, into owned memory
            reader = pa.ipc.open_file(source)
            if unit.group < reader.num_record_batches:
                batch = reader.get_batch(unit.group)
                if batch.num_rows == unit.rows:
                    return pa.Table.from_batches([batch]).select(columns)
    raise ValueError(f"bigtrain.data.files: {path!r} changed after files(...) read its "
                     f"layout (row group {unit.group} of {unit.rows} rows is no longer "
                     "there): the files must stay as they are while fit reads them; write "
                     "new data to new files and call files(...) again for the next fit")


def files(pattern, x, y=None, sample_weight=None, buffer_rows: int = 65_536) -> FileSource:
    """Parquet / Arrow / Feather files as training data for `fit`, read lazily per rank.

    Args:
        pattern: a glob ("data/*.parquet", "data/**/*.arrow") or a list of paths/globs.
        x: input column name (a fixed-size list column gives an (n, k) input, a scalar
            column (n, 1)), or a list of numeric columns stacked into one (n, k) input.
            Batches are cast to the model Input's dtype and checked against its shape.
        y: target column name (None: the model takes no targets).
        sample_weight: column of per-sample loss weights, or None.
        buffer_rows: rows shuffled together (whole row groups are added until a block
            holds at least this many); memory per rank is about this many rows / ranks.

    Columns must hold numbers or lists of numbers, without nulls (text, categories, dates
    and nulls are refused, naming the file and column: before training where the schema
    or Parquet's statistics show them, else where a rank reads them).

    Example:
        model.fit(files("data/*.parquet", x=["f0", "f1"], y="label"), batch_size=256)
    """
    _pyarrow()
    xs = [x] if isinstance(x, str) else list(x)
    if not xs or not all(isinstance(c, str) for c in xs):
        raise ValueError(f"x must be a column name or a list of column names, got {x!r}")
    for arg, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{arg} must be one column name (or None), got {value!r}")
    if not isinstance(buffer_rows, int) or buffer_rows < 1:
        raise ValueError(f"buffer_rows must be a positive number of rows, got {buffer_rows!r}")
    return FileSource(expand(pattern), xs, y, sample_weight, buffer_rows)
