"""What `bigtrain.data.files` checks and learns before training: the files a pattern
matches, their schemas (the same numeric columns and types in every file), their row groups,
and that no chosen column holds a null (where the files' metadata counts them)."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

PARQUET = (".parquet", ".pq")
ARROW = (".arrow", ".feather", ".ipc")


@dataclass(frozen=True)
class Unit:
    """One row group (Parquet) or record batch (Arrow IPC): the unit of reading."""
    file: int
    group: int
    rows: int


def expand(pattern) -> list[str]:
    """Sorted files of a glob pattern (or a list of them); an error naming the pattern when
    nothing matches."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    paths = sorted({p for pat in patterns for p in glob.glob(os.fspath(pat), recursive=True)
                    if os.path.isfile(p)})
    if not paths:
        raise FileNotFoundError(f"bigtrain.data.files: no file matches {patterns!r} (from "
                                f"directory {os.getcwd()}); check the path and the pattern, "
                                "e.g. 'data/*.parquet' or 'data/**/*.parquet'")
    odd = [p for p in paths if not p.endswith(PARQUET + ARROW)]
    if odd:
        raise ValueError(f"bigtrain.data.files: {odd[0]!r} is neither Parquet (.parquet, .pq) "
                         "nor Arrow IPC/Feather (.arrow, .feather, .ipc); narrow the pattern "
                         "to the data files (CSV, also gzipped, is not read: convert it once, "
                         "e.g. pandas.read_csv(path).to_parquet(...))")
    return paths


def _schema_and_groups(path: str):
    import pyarrow as pa
    if path.endswith(PARQUET):
        import pyarrow.parquet as pq
        meta = pq.ParquetFile(path).metadata
        return meta.schema.to_arrow_schema(), [meta.row_group(i).num_rows
                                               for i in range(meta.num_row_groups)]
    with pa.OSFile(path) as source:
        reader = pa.ipc.open_file(source)
        return reader.schema, [reader.get_batch(i).num_rows
                               for i in range(reader.num_record_batches)]


def read_layout(paths: list[str], columns: list[str]) -> list:
    """Units (row groups) of every file, after checking that each file has `columns` with
    the types of the first file, numbers only, and no nulls the metadata counts."""
    units, first = [], None
    for f, path in enumerate(paths):
        schema, groups = _schema_and_groups(path)
        for name in columns:
            if name not in schema.names:
                raise ValueError(f"bigtrain.data.files: column {name!r} is not in {path!r}; "
                                 f"its columns are {schema.names}. Pass x=/y= names that "
                                 "every file has")
        types = {c: str(schema.field(c).type) for c in columns}
        if first is None:
            first = (path, types)
            for name in columns:
                check_numeric(name, schema.field(name).type, path)
        elif types != first[1]:
            bad = next(c for c in columns if types[c] != first[1][c])
            raise ValueError(f"bigtrain.data.files: mixed schemas: column {bad!r} is "
                             f"{types[bad]} in {path!r} but {first[1][bad]} in {first[0]!r}; "
                             "rewrite the files with one schema or match fewer files")
        _check_counted_nulls(path, columns)
        units += [Unit(f, g, rows) for g, rows in enumerate(groups) if rows]
    if not units:
        raise ValueError(f"bigtrain.data.files: the files {paths[:3]}... hold no rows")
    return units


def sample_shape(path: str, xs: list[str]) -> tuple | None:
    """The shape of one sample of x as `files` stacks it: (1,) for one scalar column, (k,)
    for one fixed-size list of k values or for k scalar columns, (c, k) for c fixed-size
    lists of k; None where a list's length is known only once read. Several columns that
    are not all scalars or all lists of one length cannot stack into one array: refused."""
    import pyarrow as pa
    schema = _schema_and_groups(path)[0]

    def width(kind):  # None: a scalar; -1: a list whose length the schema does not say
        if pa.types.is_fixed_size_list(kind):
            return kind.list_size
        return -1 if pa.types.is_list(kind) or pa.types.is_large_list(kind) else None
    widths = [width(schema.field(c).type) for c in xs]
    if len(xs) == 1:
        return (1,) if widths[0] is None else (None if widths[0] < 0 else (widths[0],))
    if all(w is None for w in widths):
        return (len(xs),)
    if None not in widths and (-1 in widths or len(set(widths)) == 1):
        return None if -1 in widths else (len(xs), widths[0])
    shown = ", ".join(f"{c}: {schema.field(c).type}" for c in xs)
    raise ValueError(f"bigtrain.data.files: x={xs} mixes columns that cannot stack into one "
                     f"input ({shown} in {path!r}); give several scalar columns, several "
                     "lists of one length, or one list column")


def check_numeric(name: str, kind, path: str) -> None:
    """Refuse a column whose values are not numbers (or lists of numbers): text,
    categories, dates and nested records reach no model (torch failed on them mid-fit)."""
    import pyarrow as pa
    inner = kind.value_type if (pa.types.is_list(kind) or pa.types.is_large_list(kind) or
                                pa.types.is_fixed_size_list(kind)) else kind
    if pa.types.is_integer(inner) or pa.types.is_floating(inner) or pa.types.is_boolean(inner):
        return
    raise ValueError(f"bigtrain.data.files: column {name!r} of {path!r} holds {kind} values, "
                     "which no model can take: x, y and sample_weight columns must hold "
                     "numbers (or lists of numbers). Encode it first (a text label as class "
                     "ids, e.g. pyarrow.compute.dictionary_encode(column).indices or "
                     "pandas.factorize) or leave it out of x/y/sample_weight")


def null_error(name: str, path: str, group: int, nulls: int) -> ValueError:
    return ValueError(f"bigtrain.data.files: column {name!r} has {nulls} null (missing) "
                      f"value(s) in row group {group} of {path!r}; a null has no number to "
                      "train on (it read as NaN, or as -2**63 in an integer column). Fill or "
                      "drop the missing values before writing the files (e.g. pandas "
                      "fillna / dropna)")


def _check_counted_nulls(path: str, columns: list[str]) -> None:
    """Nulls of scalar columns that a Parquet file's statistics count. Arrow files, Parquet
    written without statistics and list columns (whose leaf counts take an empty list for a
    null) are checked as they are read."""
    if not path.endswith(PARQUET):
        return
    import pyarrow.parquet as pq
    meta = pq.ParquetFile(path).metadata
    wanted = {j: meta.schema.column(j).path for j in range(meta.num_columns)}
    wanted = {j: name for j, name in wanted.items() if name in columns}
    for g in range(meta.num_row_groups):
        for j, name in wanted.items():
            stats = meta.row_group(g).column(j).statistics
            if stats is not None and stats.has_null_count and stats.null_count:
                raise null_error(name, path, g, stats.null_count)
