"""What `bigtrain.data.files` checks and learns before training: the files a pattern
matches, their schemas (the same columns and types in every file) and their row groups."""
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
                         "to the data files")
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
    the types of the first file."""
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
        elif types != first[1]:
            bad = next(c for c in columns if types[c] != first[1][c])
            raise ValueError(f"bigtrain.data.files: mixed schemas: column {bad!r} is "
                             f"{types[bad]} in {path!r} but {first[1][bad]} in {first[0]!r}; "
                             "rewrite the files with one schema or match fewer files")
        units += [Unit(f, g, rows) for g, rows in enumerate(groups) if rows]
    if not units:
        raise ValueError(f"bigtrain.data.files: the files {paths[:3]}... hold no rows")
    return units
