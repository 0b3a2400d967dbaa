"""Checks on the user's data (and on what fit and predict are asked to run with: losses
exact on whole batches only, a predict that would wait on sharded weights), run before
training starts, with messages that say what was wrong and how to fix it."""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch

_CHUNK = 65_536  # rows per chunk when scanning arrays that may be memory-mapped


def as_list(data, names: list[str] | None, what: str, extra_ok: bool = False) -> list:
    """Arrays of one kind of data (inputs or targets) as a list in the model's order.
    `extra_ok`: a dict's keys that name none of `names` are left out (Keras reads only the
    keys that name an Input)."""
    if data is None:
        return []
    if isinstance(data, dict):
        if extra_ok and names is not None and set(names) <= set(data):
            return [data[n] for n in names]
        if names is None or set(data) != set(names):
            raise ValueError(f"{what} is a dict with keys {sorted(data)}, but the model's "
                             f"{what} are named {names}; use those keys")
        return [data[n] for n in names]
    if isinstance(data, (list, tuple)):
        if data and all(_is_plain(v) for v in data) and (names is None or len(names) == 1
                                                          or len(data) != len(names)):
            return [np.asarray(data)]  # one array written as nested Python lists (Keras too)
        return [np.asarray(v) if _is_plain(v) else v for v in data]
    return [data]


def _is_plain(v) -> bool:
    """A Python number or a (nested) list/tuple of them: data, not a list of arrays."""
    if isinstance(v, (bool, int, float, np.number)):
        return True
    return isinstance(v, (list, tuple)) and bool(v) and _is_plain(v[0])


def _nrows(a) -> int:
    return int(a.shape[0]) if hasattr(a, "shape") and len(a.shape) else 0


def check_lengths(xs: list, ys: list, sample_weight=None) -> int:
    """Every array has the same number of samples (> 0); returns that number."""
    if not xs:
        raise ValueError("no input data: pass x (an array, a list of arrays or a dict)")
    sizes = {f"x[{i}]": _nrows(a) for i, a in enumerate(xs)}
    sizes.update({f"y[{i}]": _nrows(a) for i, a in enumerate(ys)})
    if sample_weight is not None:
        sizes["sample_weight"] = _nrows(sample_weight)
    if len(set(sizes.values())) != 1:
        shown = list(sizes.items())
        listed = ", ".join(f"{k}: {v}" for k, v in shown[:8])
        more = f", ... ({len(shown) - 8} more arrays)" if len(shown) > 8 else ""
        raise ValueError(f"x and y must have the same number of samples, got {listed}{more}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("the data is empty (0 samples); pass at least one sample")
    return n


def check_numeric(arrays: list, what: str) -> None:
    """Raise for arrays of text or Python objects, which no model can take."""
    for i, a in enumerate(arrays):
        if isinstance(a, torch.Tensor):
            continue
        dtype = np.asarray(a[:0]).dtype
        if dtype.kind in "USOV":
            name = what if len(arrays) == 1 else f"{what}[{i}]"
            raise ValueError(f"{name} has dtype {dtype} (text or objects); bigtrain needs numeric "
                             "arrays: encode text first (e.g. TF-IDF features or token ids) and "
                             "convert with np.asarray(..., dtype='float32')")


# arrays a scan found finite: id -> (weak reference, layout when scanned); see check_finite
_FOUND_FINITE: dict[int, tuple] = {}


def _layout(a) -> tuple | None:
    """What must be unchanged for an earlier scan of `a` to stand: its memory, shape and
    dtype, and for a tensor the version counter every in-place torch write bumps. A numpy
    array written in place keeps its layout; fit's loss check covers that (check_finite)."""
    if isinstance(a, torch.Tensor):
        if a.device.type == "meta" or a.is_inference():  # no version counter to read
            return None
        return ("tensor", a.data_ptr(), tuple(a.shape), a.stride(), a.dtype, a._version)
    if isinstance(a, np.ndarray):
        return ("ndarray", a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
    return None


def _seen_finite(a) -> bool:
    held = _FOUND_FINITE.get(id(a))
    return held is not None and held[0]() is a and held[1] == _layout(a)


def _remember_finite(a) -> None:
    layout = _layout(a)
    if layout is None:
        return
    key = id(a)
    try:
        ref = weakref.ref(a, lambda _, key=key: _FOUND_FINITE.pop(key, None))
    except TypeError:  # an array type without weak references: scanned every time
        return
    _FOUND_FINITE[key] = (ref, layout)


def check_finite(arrays: list, what: str, trusted: list | None = None) -> None:
    """Raise if a float array holds NaN or Inf: how many, and the first (row, column).

    With `trusted` (a list; fit passes one when its loss check is on), an array an earlier
    scan found finite and whose memory, shape, dtype (and tensor version) are unchanged is
    not read again but appended to `trusted` as (array, name): a second fit on the same
    80 MB skips a 5 ms pass. A NaN written into it in place since then makes the loss
    non-finite, which stops that fit; fit then scans the trusted arrays (`rescan`)."""
    for i, a in enumerate(arrays):
        dtype = a.dtype if isinstance(a, torch.Tensor) else np.asarray(a[:0]).dtype
        floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) \
            else np.issubdtype(dtype, np.floating)
        if not floating:
            continue
        name = what if len(arrays) == 1 else f"{what}[{i}]"
        if trusted is not None and _seen_finite(a):
            trusted.append((a, name))
            continue
        _scan(a, name)
        if trusted is not None:
            _remember_finite(a)


def rescan(trusted: list, why: str) -> None:
    """Scan the arrays check_finite trusted; raise, adding `why`, if one now holds NaN/Inf
    (each is forgotten first, so the next fit reads every one of them again)."""
    for a, _ in trusted:
        _FOUND_FINITE.pop(id(a), None)
    for a, name in trusted:
        _scan(a, name, why)
        _remember_finite(a)


def _scan(a, name: str, why: str = "") -> None:
    """Count the NaN/Inf values of one float array by chunks; raise naming the first."""
    bad, first = 0, None
    for start in range(0, _nrows(a), _CHUNK):
        chunk = a[start:start + _CHUNK]
        tensor = chunk if isinstance(chunk, torch.Tensor) else \
            torch.from_numpy(np.ascontiguousarray(chunk))
        # the common case in one fast reading pass: a NaN or Inf anywhere makes the sum
        # non-finite, so a finite sum proves there is none (an overflowing sum of finite
        # values only sends us to the exact count below)
        if bool(torch.isfinite(tensor.sum())):
            continue
        chunk = tensor.detach().cpu().numpy()
        mask = ~np.isfinite(chunk)
        count = int(mask.sum())
        if count and first is None:
            pos = np.argwhere(mask)[0]
            first = (start + int(pos[0]), *map(int, pos[1:]))
        bad += count
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); the first at index "
                         f"{first}. Clean or impute them before fit (bigtrain doctor lists "
                         f"them all).{' ' + why if why else ''}")


def _head(a) -> np.ndarray:
    """The first 1000 rows of `a` as a numpy array: the label checks' sample."""
    return np.asarray(a[:1000].numpy() if isinstance(a, torch.Tensor) else a[:1000])


def _is_integer_like(a) -> bool:
    arr = _head(a)
    return np.issubdtype(arr.dtype, np.integer) or bool(np.all(np.mod(arr, 1) == 0))


def _first_non_finite(a) -> int | None:
    """The first row of `_head(a)` holding a NaN or Inf, or None."""
    arr = _head(a)
    if not np.issubdtype(arr.dtype, np.floating):
        return None
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(1)
    return int(bad.argmax()) if bad.any() else None


# losses whose target has the output's values, one for one
_SAME_SHAPE = ("binary_crossentropy", "mse", "mean_squared_error", "mae", "mean_absolute_error")


def check_targets(y, loss_name: str | None, output_shape: tuple, output_name: str,
                  ignore_class: int | None = None) -> None:
    """Labels fit the loss and the output: one-hot vs integer ids, ranges, widths.
    `ignore_class`: the loss's (Keras's SparseCategoricalCrossentropy(ignore_class=-1)):
    labels of that value are left out of the loss, so they may lie outside the classes."""
    if loss_name is None or y is None:
        return
    yshape = tuple(y.shape[1:])
    units = output_shape[-1] if output_shape else 1
    if loss_name == "categorical_crossentropy":
        if yshape in ((), (1,)) and units > 1:
            raise ValueError(
                f"labels for output {output_name!r} are integer class ids (shape "
                f"{tuple(y.shape)}), but loss 'categorical_crossentropy' expects one-hot labels "
                f"of shape (n, {units}); use loss='sparse_categorical_crossentropy' or one-hot "
                "encode them (bigtrain.utils.to_categorical)")
        if yshape != tuple(output_shape):
            raise ValueError(f"one-hot labels of shape {tuple(y.shape)} do not match output "
                             f"{output_name!r} of shape (None, {', '.join(map(str, output_shape))})")
    elif loss_name == "sparse_categorical_crossentropy":
        if len(yshape) >= 1 and yshape[-1] == units and units > 1 and yshape == tuple(output_shape):
            raise ValueError(
                f"labels for output {output_name!r} look one-hot (shape {tuple(y.shape)}), but "
                "loss 'sparse_categorical_crossentropy' expects integer class ids of shape "
                "(n,); use loss='categorical_crossentropy' or pass y.argmax(-1)")
        if not _is_integer_like(y):
            row = _first_non_finite(y)
            got = f"a NaN or Inf at row {row}" if row is not None else "non-integer values"
            raise ValueError(f"loss 'sparse_categorical_crossentropy' needs integer class ids "
                             f"for output {output_name!r}, got {got}")
        ids = tuple(output_shape[:-1])  # one class id per output position
        if math.prod(yshape) != math.prod(ids):
            raise ValueError(
                f"labels of shape {tuple(y.shape)} do not fit output {output_name!r} of shape "
                f"(None, {', '.join(map(str, output_shape))}): loss "
                f"'sparse_categorical_crossentropy' needs one class id per sample, shape "
                f"(n,){'' if not ids else f' or (n, {chr(44).join(map(str, ids))})'}")
        lo, hi = _range(y, skip=ignore_class)
        if lo < 0 or hi >= units:
            kept = "" if ignore_class is None else f" besides ignore_class={ignore_class}"
            raise ValueError(f"labels for output {output_name!r} must be class ids in [0, "
                             f"{units - 1}] (the output has {units} units), got values in "
                             f"[{lo:g}, {hi:g}]{kept}")
    elif loss_name in _SAME_SHAPE and math.prod(yshape) != math.prod(output_shape):
        raise ValueError(
            f"labels of shape {tuple(y.shape)} do not fit output {output_name!r} of shape "
            f"(None, {', '.join(map(str, output_shape))}): loss {loss_name!r} needs a target "
            f"per output value, shape (n, {', '.join(map(str, output_shape))}); give the last "
            f"layer {math.prod(yshape)} units, or pass the matching targets")
    if loss_name == "binary_crossentropy":
        lo, hi = _range(y)
        if lo < 0 or hi > 1:
            raise ValueError(f"loss 'binary_crossentropy' needs labels in [0, 1] for output "
                             f"{output_name!r}, got values in [{lo:g}, {hi:g}]")


def _range(y, skip: float | None = None) -> tuple[float, float]:
    """(min, max) of `y`, values equal to `skip` left out ((inf, -inf) if none is left)."""
    lo, hi = float("inf"), float("-inf")
    for start in range(0, _nrows(y), _CHUNK):
        chunk = y[start:start + _CHUNK]
        chunk = chunk.numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        if skip is not None:
            chunk = chunk[chunk != skip]
        if chunk.size:
            lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    return lo, hi


def check_input_shapes(xs: list, expected: list[tuple], names: list[str]) -> None:
    """Each input array's per-sample shape equals the model input's (or lacks only its
    last axis of 1, which each batch then gains, as Keras)."""
    if len(xs) != len(expected):
        raise ValueError(f"the model takes {len(expected)} input(s) ({', '.join(names)}), "
                         f"got {len(xs)} array(s)")
    for a, shape, name in zip(xs, expected, names):
        if len(a.shape) == len(shape) and shape and shape[-1] == 1 and \
                tuple(a.shape[1:]) == tuple(shape[:-1]):
            continue  # Keras adds the missing last axis of 1: (n,) for (None, 1)
        if tuple(a.shape[1:]) != tuple(shape):
            raise ValueError(f"input {name!r} expects samples of shape {tuple(shape)} (batch "
                             f"shape (None, {', '.join(map(str, shape))})), got an array of "
                             f"shape {tuple(a.shape)}")


def refuse_inexact_losses(model, processes: int, accumulate_steps: int = 1) -> None:
    """A loss that sums over the whole batch, or divides by a count of it (masked steps,
    ignore_class), is exact on whole batches only: ranks and accumulated micro-batches each
    see their own share, and the engine weighs each share's loss as a share of a mean.
    `processes`: how many processes the fit trains on."""
    for spec in model.compiled.losses:
        why = spec.whole_batch_only()
        if why is None:
            continue
        what, fix = why
        if processes > 1:
            raise ValueError(f"{what}, which bigtrain computes exactly on one process only, "
                             f"not on {processes}: fit on one process, or {fix}")
        if accumulate_steps > 1:
            raise ValueError(f"{what}, which bigtrain computes exactly on whole batches only, "
                             f"not split into accumulate_steps={accumulate_steps} "
                             f"micro-batches: fit with accumulate_steps=1 (a smaller "
                             f"batch_size if memory is short), or {fix}")


def refuse_split_weights(model) -> None:
    """predict in a rank-0-only callback of a fit on several ranks runs on rank 0 alone; a
    forward through weights split over the ranks (zero2/zero3, tensor) would wait for ranks
    that never join it, and the fit would die of the mismatch later. (After fit, or in a
    callback every rank runs, every rank's predict takes part: that works.)"""
    from bigtrain.engine.callbacks.base import alone
    if alone() and any(hasattr(p, "to_local") for p in model.net.parameters()):
        raise RuntimeError("predict() in a callback of a fit whose strategy splits the weights "
                           "over the ranks (zero2/zero3/fsdp_offload/tensor): callbacks run on "
                           "rank 0 only, and a forward needs every rank. Call predict after "
                           "fit returns, or train with strategy='ddp' or 'zero1', which keep "
                           "whole weights on every rank.")
