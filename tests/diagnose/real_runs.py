"""Real small training runs for the doctor's tests: scikit-learn's handwritten digits (8x8
pixels scaled to 0..1, 1437 training and 360 validation rows, 10 classes), a one-hidden-layer
ReLU network, and the run record the engine wrote. One run takes about 2 s on one thread.
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch

from bigtrain.diagnose import RunRecord, check_run
from bigtrain.layers import Dense, Input
from bigtrain.models import Sequential


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, x_val, y_val) from sklearn.datasets.load_digits, shuffled with a fixed seed."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32), y[order]
    return x[360:], y[360:], x[:360], y[:360]


def digits_run(optimizer, *, hidden=(64,), y=None, bias=None, epochs: int = 8):
    """Train on the digits (training labels `y` if given) and return (record, history).
    `bias` sets every hidden layer's starting bias (a very negative one kills the ReLUs)."""
    x, y0, xv, yv = digits()
    torch.manual_seed(0)
    model = Sequential([Input((64,))] + [Dense(h, activation="relu") for h in hidden]
                       + [Dense(10, activation="softmax")])
    if bias is not None:
        model.build((64,))
        hidden_linears = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)][:-1]
        with torch.no_grad():
            for m in hidden_linears:
                m.bias.fill_(bias)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: spare threads only spin
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            history = model.fit(x, y0 if y is None else y, epochs=epochs, batch_size=32,
                                validation_data=(xv, yv), verbose=0, run_dir=run_dir, seed=0)
            return RunRecord.load(run_dir), history.history
    finally:
        torch.set_num_threads(threads)


def ranked(record: RunRecord) -> list:
    """The doctor's warnings and errors, most explaining first (info left out)."""
    return [f for f in check_run(record) if f.severity != "info"]
