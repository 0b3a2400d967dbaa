"""Float64 targets and sample weights from a torch Dataset train as the same arrays do:
as float32 (Keras's floatx), so a Dataset fit equals the array fit step for step."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import bigtrain
from bigtrain.engine.data import DatasetData
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 4)).astype("float32")
Y = RNG.normal(size=(40, 2))  # float64, as numpy makes them
SW = RNG.uniform(0.5, 2.0, 40)  # float64


class _Items(Dataset):
    """(x, y[, sample_weight]) items; `scalar`: y as a Python float (collated as float64)."""

    def __init__(self, weighted=False, scalar=False):
        self.weighted, self.scalar = weighted, scalar

    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        y = float(Y[i, 0]) if self.scalar else Y[i]
        return (X[i], y, SW[i]) if self.weighted else (X[i], y)


def _model(units=2):
    bigtrain.set_seed(0)
    inp = Input((4,))
    model = Model(inp, Dense(units)(Dense(8, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


@pytest.mark.parametrize("weighted,scalar", [(False, False), (True, False), (False, True)],
                         ids=["y", "y_and_weights", "python_float_y"])
def test_a_dataset_fit_equals_the_array_fit(weighted, scalar):
    fit = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    by_arrays = _model(1 if scalar else 2)
    want = by_arrays.fit(X, Y[:, 0] if scalar else Y, sample_weight=SW if weighted else None,
                         **fit).history
    by_items = _model(1 if scalar else 2)
    got = by_items.fit(_Items(weighted, scalar), **fit).history
    assert got == want  # the same float32 numbers, step for step
    for a, b in zip(by_items.get_weights(), by_arrays.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dataset_batches_hold_float32_targets_and_weights():
    data = DatasetData(_Items(weighted=True))
    _, y, sw = data.take(torch.arange(4), torch.device("cpu"))
    assert y.dtype == torch.float32 and sw.dtype == torch.float32
