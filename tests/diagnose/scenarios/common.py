"""Shared pieces of the doctor's scenario suite: one small generated dataset that every
scenario derives its planted fault from, a fit that writes a real run record, and the
doctor's verdict on it.

The data: 8 standardized features, a linear boundary with a little noise (a logistic
regression reaches about 0.9 accuracy), 480 training and 160 validation rows.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from bigtrain import layers as L
from bigtrain.diagnose import RunRecord, check_run
from bigtrain.models import Sequential
from bigtrain.optimizers import Adam

N_TRAIN, N_VAL, FEATURES = 480, 160, 8


@dataclass(frozen=True)
class Data:
    x: np.ndarray   # (N_TRAIN, FEATURES) float32
    y: np.ndarray   # (N_TRAIN,) int64 class ids
    xv: np.ndarray  # (N_VAL, FEATURES)
    yv: np.ndarray


def base_data(classes: int = 2, seed: int = 0) -> Data:
    """Standardized features, labels from a linear score (argmax over `classes` scores)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_TRAIN + N_VAL, FEATURES)).astype(np.float32)
    w = rng.standard_normal((FEATURES, classes))
    score = x @ w + 0.3 * rng.standard_normal((len(x), classes))
    y = (score[:, 0] > score[:, 1]).astype(np.int64) if classes == 2 else score.argmax(1)
    return Data(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def mlp(hidden=(16,), classes: int = 2, activation: str = "relu", first=None) -> Sequential:
    """Dense layers over FEATURES inputs; `first` is an optional layer put first."""
    layers = [L.Input((FEATURES,))] + ([first] if first is not None else [])
    layers += [L.Dense(h, activation=activation) for h in hidden]
    return Sequential(layers + [L.Dense(classes, activation="softmax" if classes > 1 else None)])


def run(model, x, y, val=None, *, optimizer=None, loss="sparse_categorical_crossentropy",
        metrics=("accuracy",), epochs: int = 5, batch_size: int = 32, **fit_kw) -> RunRecord:
    """Compile and fit `model` with a run directory; the record the engine wrote."""
    model.compile(optimizer=optimizer or Adam(learning_rate=1e-2), loss=loss,
                  metrics=list(metrics))
    with tempfile.TemporaryDirectory() as run_dir:
        model.fit(x, y, validation_data=val, epochs=epochs, batch_size=batch_size, verbose=0,
                  run_dir=run_dir, seed=0, **fit_kw)
        return RunRecord.load(run_dir)


def fit_record(data: Data, model=None, **kw) -> RunRecord:
    """`run` on a Data with its validation split."""
    return run(model or mlp(), data.x, data.y, (data.xv, data.yv), **kw)


def verdict(record: RunRecord) -> list:
    """The doctor's warnings and errors on a record, ranked (info findings left out)."""
    return [f for f in check_run(record) if f.severity != "info"]


def threads_env() -> int:
    return os.cpu_count() or 1


def _base_x_y():
    d = base_data()
    return d.x, d.y


BASE_X_Y = _base_x_y()  # the shared training arrays, for runs without validation
