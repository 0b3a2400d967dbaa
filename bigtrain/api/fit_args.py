"""Keras's `compile`/`fit` arguments that need translating before a TrainTask exists:
unknown keywords (refused with the closest valid name), `class_weight` (turned into per-sample
weights, as Keras does), `loss_weights` (a list, or a dict keyed by output name) and
`devices` (the number of processes)."""
from __future__ import annotations

import difflib

import numpy as np


def check_keywords(method: str, given: dict, valid) -> None:
    """Raise TypeError for a keyword `method` does not take, naming the closest valid one.

    Example:
        >>> check_keywords("fit", {"epoch": 3}, ["epochs", "batch_size"])
        Traceback (most recent call last):
        TypeError: fit() got an unexpected keyword argument 'epoch'; did you mean 'epochs'?
    """
    valid = sorted(valid)
    for name in given:
        if name in valid:
            continue
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else \
            f"valid keywords: {', '.join(valid)}"
        raise TypeError(f"{method}() got an unexpected keyword argument {name!r}; {hint}")


def class_weight_to_sample_weight(ys: list, class_weight: dict, sample_weight) -> np.ndarray:
    """Per-sample weights `class_weight[label]` (1.0 for a class not in the dict), as Keras:
    one-hot labels count by their argmax, `(n, 1)` and `(n,)` labels by their rounded value.

    Args:
        ys: the model's targets (one array: class_weight needs a single output).
        class_weight: {class index: weight}.
        sample_weight: must be None (Keras refuses both at once).

    Returns:
        float32 array of shape (n,).
    """
    if not isinstance(class_weight, dict):
        raise ValueError(f"class_weight must be a dict {{class index: weight}}, got "
                         f"{type(class_weight).__name__}")
    if sample_weight is not None:
        raise ValueError("fit got both class_weight and sample_weight; pass one (fold the "
                         "class weights into sample_weight to use both)")
    if len(ys) != 1:
        raise ValueError(f"class_weight needs a model with one output (this one has "
                         f"{len(ys)}); pass sample_weight instead")
    y = np.asarray(ys[0].cpu() if hasattr(ys[0], "cpu") else ys[0])
    _check_class_labels(y)
    if y.ndim > 1:
        y = y.argmax(-1) if y.shape[-1] != 1 else y.squeeze(-1)
    labels = np.round(y).astype(np.int64)
    weights = np.ones(labels.shape[0], dtype=np.float32)
    for cls, w in class_weight.items():
        weights[labels == int(cls)] = float(w)
    return weights


def _check_class_labels(y: np.ndarray) -> None:
    """Refuse labels with a class per time step, which class_weight cannot read one class
    per sample from: (n, T, ...) labels, and (n, T) integers other than 0 and 1 (ids, not
    one-hot or multi-label rows). Keras takes the argmax of (n, T) ids (a step's index,
    not a class) and fails on (n, T, C) ("only 0-dimensional arrays can be converted to
    Python scalars")."""
    ids = y.ndim == 2 and y.shape[1] > 1 and np.issubdtype(y.dtype, np.integer) and \
        bool(((y[:1000] != 0) & (y[:1000] != 1)).any())
    if y.ndim <= 2 and not ids:
        return
    raise ValueError(f"class_weight reads one class per sample, from labels of shape (n,), "
                     f"(n, 1) or one-hot (n, classes); got labels of shape {tuple(y.shape)}, "
                     f"a class per time step. Pass sample_weight of shape {tuple(y.shape[:2])}"
                     " instead, each step's class weight (for class ids: "
                     "np.vectorize(lambda c: class_weight.get(c, 1.0))(labels))")


def loss_weight_list(loss_weights, output_names: list[str]) -> list[float]:
    """`compile(loss_weights=...)` as one float per output, in output order.

    A list (or tuple) gives one weight per output; a dict maps output names to weights
    (outputs it does not name weigh 1.0); None weighs every output 1.0.
    """
    n = len(output_names)
    if loss_weights is None:
        return [1.0] * n
    if isinstance(loss_weights, dict):
        unknown = [k for k in loss_weights if k not in output_names]
        if unknown:
            raise ValueError(f"loss_weights names {unknown}, which are not outputs of this "
                             f"model; its outputs are {output_names}")
        return [float(loss_weights.get(name, 1.0)) for name in output_names]
    if isinstance(loss_weights, (int, float)) and n == 1:
        return [float(loss_weights)]
    weights = [float(w) for w in loss_weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} loss_weights for {n} outputs ({output_names}); "
                         "pass one per output, or a dict {output name: weight}")
    return weights


def processes(devices) -> int:
    """How many processes fit will train on, for its `devices=` (inside a launched job:
    the job's world size)."""
    import os
    from bigtrain.launch import join as dist_env
    return dist_env.resolve_devices(devices) or int(os.environ.get("WORLD_SIZE", "1"))
