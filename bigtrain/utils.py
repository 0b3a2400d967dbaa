"""Small helpers users reach for next to fit: seeding and label encoding."""
from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch so that model creation and training repeat exactly.

    Example:
        bigtrain.set_seed(0)
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def clear_session() -> None:
    """Restart automatic layer names, so a model rebuilt in a fresh state gets the same
    names (and state-dict keys) as before, as `keras.backend.clear_session`."""
    from bigtrain.api.layers.base import clear_session as _clear
    _clear()


def to_categorical(y, num_classes: int | None = None) -> np.ndarray:
    """Integer class ids -> one-hot float32 rows, as `keras.utils.to_categorical`."""
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    n = int(num_classes if num_classes is not None else y.max() + 1)
    if y.size and (y.min() < 0 or y.max() >= n):
        raise ValueError(f"class ids must be in [0, {n - 1}], got [{y.min()}, {y.max()}]")
    out = np.zeros((y.size, n), dtype=np.float32)
    out[np.arange(y.size), y] = 1.0
    return out
