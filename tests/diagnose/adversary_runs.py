"""Small real runs for the doctor's adversary tests: scikit-learn's shipped datasets (digits,
wine, breast cancer) split 80/20 with a fixed seed and standardized on the training rows,
Dense networks, and the run record the engine wrote. A run takes well under 2 s on one thread.
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch

from bigtrain.diagnose import RunRecord
from bigtrain.layers import Dense, Input
from bigtrain.models import Sequential


def sklearn_data(name: str, *, scale: bool = True, seed: int = 0):
    """(x, y, x_val, y_val) of sklearn.datasets.load_<name>: shuffled, the first fifth held
    out; `scale` standardizes with the training mean/std (constant columns left as they are)."""
    import sklearn.datasets
    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    n = len(x) // 5
    x_tr, y_tr, x_val, y_val = x[n:], y[n:], x[:n], y[:n]
    if scale:
        mean, std = x_tr.mean(0), x_tr.std(0)
        std = np.where(std > 0, std, 1.0)
        x_tr, x_val = (x_tr - mean) / std, (x_val - mean) / std
    return x_tr.astype(np.float32), y_tr, x_val.astype(np.float32), y_val


def mlp(inputs: int, hidden, outputs: int, *, activation="relu", out_activation="softmax",
        **dense_kw) -> list:
    """Layers of a Dense network (Input first)."""
    return ([Input((inputs,))] + [Dense(h, activation=activation, **dense_kw) for h in hidden]
            + [Dense(outputs, activation=out_activation)])


def scale_kernels(factor: float):
    """A `mutate` that multiplies every Dense kernel by `factor` (a hand-made bad init)."""
    def mutate(model):
        with torch.no_grad():
            for m in model.net.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.mul_(factor)
    return mutate


def fit_run(layers, data, optimizer, *, loss="sparse_categorical_crossentropy", epochs=6,
            batch_size=32, mutate=None):
    """Compile and fit a Sequential of `layers` on `data` (x, y, x_val, y_val) with a run
    directory, one torch thread; returns (record, history). `mutate(model)` runs on the
    built model before compile (to plant a bad start)."""
    x, y, x_val, y_val = data
    torch.manual_seed(0)
    model = Sequential(layers)
    if mutate is not None:
        model.build(x.shape[1:])
        mutate(model)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return _fit(model, (x, y), dict(validation_data=(x_val, y_val), epochs=epochs,
                                    batch_size=batch_size))


def fit_dataset(dataset, inputs: int, optimizer, *, epochs=2, batch_size=32):
    """Fit a 64-unit ReLU network with 10 softmax outputs on a torch Dataset."""
    torch.manual_seed(0)
    model = Sequential(mlp(inputs, (64,), 10))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return _fit(model, (dataset,), dict(epochs=epochs, batch_size=batch_size))


def _fit(model, args, kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: spare threads only spin
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            history = model.fit(*args, verbose=0, run_dir=run_dir, seed=0, **kwargs)
            return RunRecord.load(run_dir), history.history
    finally:
        torch.set_num_threads(threads)


def shown(findings) -> list:
    """(kind, impact, evidence) of findings, for assertion messages."""
    return [(f.kind, round(f.impact, 2), f.evidence[:160]) for f in findings]
