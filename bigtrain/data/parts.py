"""The parts of one batch as Datasets and streams give them: x, y and sample_weight, each a
tensor (or array), a tuple/list of them (several inputs or outputs), or a dict of them keyed
by the model's input or output names, as Keras takes a generator's or a Dataset's batches.

Why a module of its own: the same walk over tuples and dicts is needed to cut a rank's rows
out of a global batch (`rows_of`), to move a collated batch to the device (`moved`) and to
put a dict's values in the model's order (`by_name`), for map-style Datasets and streams
alike.

Example:
    x = by_name({"ids": ids, "mask": m, "extra": e}, ["ids", "mask"], "x", "inputs")
    # (ids, mask): keys that name no input are left out, as Keras leaves them
"""
from __future__ import annotations

import numpy as np
import torch


def to_tensor(a) -> torch.Tensor:
    """A batch part as a tensor (float64 becomes float32, as Keras's floatx); text or Python
    objects are refused with the fix."""
    if not isinstance(a, torch.Tensor):
        arr = np.asarray(a)
        if arr.dtype.kind in "USOV":
            raise TypeError(f"a batch holds values of dtype {arr.dtype} (text or objects), "
                            "which no model can take: yield numbers, numpy arrays or tensors "
                            "(encode text first, e.g. as token ids or TF-IDF features)")
        a = torch.as_tensor(arr)
    return a.float() if a.dtype == torch.float64 else a


def _is_plain(part) -> bool:
    """A Python number, or a (nested) list/tuple of them: one array written as lists."""
    if isinstance(part, (bool, int, float, np.number)):
        return True
    return isinstance(part, (list, tuple)) and bool(part) and _is_plain(part[0])


def _is_group(part) -> bool:
    """A tuple/list of several parts (inputs or outputs), not one array written as lists."""
    return isinstance(part, (tuple, list)) and not _is_plain(part)


def rows_of(part, lo: int, hi: int):
    """Rows [lo, hi) of a tensor or array, of each one in a tuple/list (returned as a tuple)
    or of each value of a dict (returned as a dict with the same keys)."""
    if isinstance(part, dict):
        return {k: rows_of(v, lo, hi) for k, v in part.items()}
    if _is_group(part):
        return tuple(rows_of(p, lo, hi) for p in part)
    return to_tensor(part)[lo:hi]


def count_rows(part) -> int:
    """Samples in a batch part: the length of its (first) tensor, array or dict value."""
    while isinstance(part, dict) or _is_group(part):
        if not part:
            raise ValueError("a batch part is an empty tuple, list or dict; give each of x "
                             "and y as an array, a tuple of arrays or a dict of arrays")
        part = next(iter(part.values())) if isinstance(part, dict) else part[0]
    return int(len(part))


def moved(part, device, what: str):
    """A collated batch part on `device`: tensors moved, tuples/lists (as tuples) and dicts
    moved value by value, an object with its own `.to` (a tokenizer's batch) asked to move
    itself. Anything else (strings, Python objects a Dataset returned) is refused, naming
    `what` ("x", "y", "sample_weight"), before it reaches the model."""
    if isinstance(part, torch.Tensor):
        return part.to(device, non_blocking=True)
    if isinstance(part, dict):
        return {k: moved(v, device, f"{what}[{k!r}]") for k, v in part.items()}
    if isinstance(part, (tuple, list)) and part and isinstance(part[0], (str, bytes)):
        _refuse(part[0], what)  # torch's collate keeps a batch of strings as a list
    if isinstance(part, (tuple, list)):
        return tuple(moved(p, device, f"{what}[{i}]") for i, p in enumerate(part))
    if callable(getattr(part, "to", None)):
        return part.to(device)
    _refuse(part, what)


def _refuse(item, what: str):
    shown = repr(item)
    raise TypeError(f"the Dataset's items hold {what} as a {type(item).__name__} "
                    f"({shown[:60]}{'...' if len(shown) > 60 else ''}), which no model can "
                    "take: return numbers, numpy arrays or tensors (encode text first, e.g. "
                    "as token ids or TF-IDF features)")


def by_name(part, names: list[str] | None, what: str, kind: str):
    """A dict batch part as its values in the order of `names` (the model's input or output
    names; `kind` says which, for the message): one value bare, several as a tuple. Keys
    that name none of them are left out, as Keras leaves them out. Other parts, or any part
    when `names` is None (a torch module that reads a dict itself), are returned as given."""
    if not isinstance(part, dict) or names is None:
        return part
    missing = [n for n in names if n not in part]
    if missing:
        raise ValueError(f"{what} is a dict with keys {sorted(map(str, part))}, but the "
                         f"model's {kind} are named {list(names)} (missing {missing}); key "
                         f"the dict by the {kind}' names, or give a tuple in their order")
    values = tuple(part[n] for n in names)
    return values[0] if len(values) == 1 else values
