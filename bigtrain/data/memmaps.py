"""Memory-mapped arrays sent to the ranks of this host as their file, byte offset, dtype and
shape instead of their bytes.

Why: pickle copies a `np.memmap` whole (numpy reduces it like any array), so a memory-mapped
`.npy` given to `fit(devices=N)`, or an array the launcher spills to a file for being
large, travelled inside the task's payload and every rank held a private copy of all of
it: N copies of data meant to be read only where indexed. Reopened from its file, each
rank's view shares the page cache and reads only the rows its batches index.

Example:
    ref = memmap_reference(np.load("x.npy", mmap_mode="r")[1000:])
    view = open_memmap(*ref)   # the same rows, read from the file, on another process
"""
from __future__ import annotations

import mmap

import numpy as np


def memmap_reference(a) -> tuple | None:
    """(path, dtype, shape, byte offset in the file) of a C-contiguous, non-empty memmap or
    view of one (validation_split's halves, a slice); None where `a` cannot be reopened so
    (no file, strided, empty, or copy-on-write, whose writes the file never sees): it is
    then copied as before."""
    mapping = getattr(a, "_mmap", None)
    if not isinstance(a, np.memmap) or mapping is None or not a.filename or a.size == 0 or \
            not a.flags.c_contiguous or a.mode == "c":
        return None
    # the mapping starts at the root's offset rounded down to the allocation granularity;
    # a view's rows start that many bytes further into it as its pointer is past the start
    start = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY
    base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    return str(a.filename), a.dtype.str, tuple(a.shape), start + (a.ctypes.data - base)


def open_memmap(path: str, dtype: str, shape: tuple, offset: int) -> np.memmap:
    """The read-only memmap `memmap_reference` describes."""
    return np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
