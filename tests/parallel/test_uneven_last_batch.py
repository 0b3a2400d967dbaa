"""Strategies other than the pipeline on an epoch whose last batch is uneven: 25 samples in
batches of 8 leave a last batch of 1, so one data-parallel rank (or parameter-server worker)
has an empty share. Each must train as one process does (weights, loss, metrics)."""
import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

N, BATCH, TOL = 25, 8, 1e-5


def fit_small(n=N, **kw):
    """(History, weights) of one epoch of a small Dense model on `n` samples."""
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(20,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(16, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((N, 20), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, N)]
    hist = model.fit(x[:n], y[:n], epochs=1, batch_size=BATCH, verbose=0, shuffle=False,
                     validation_data=(x[:13], y[:13]), **kw)
    return hist.history, {k: v.detach().clone() for k, v in model.net.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    hist, weights = fit_small()
    _, without_last = fit_small(n=N - 1)  # the same run, one step short
    gap = max(float((weights[k] - without_last[k]).abs().max()) for k in weights)
    assert gap > 10 * TOL  # the check below tells the last (1-sample) step apart
    return hist, weights


@pytest.mark.parametrize("strategy,devices", [("tensor", 2), ("ddp_balanced", 2), ("ps", 3),
                                              ("zero3", 2)])
def test_an_uneven_last_batch_trains_as_one_process(reference, strategy, devices):
    ref_hist, ref = reference
    hist, weights = fit_small(strategy=strategy, devices=devices)
    assert max(float((weights[k] - ref[k]).abs().max()) for k in ref) <= TOL
    for key in ref_hist:
        assert hist[key] == pytest.approx(ref_hist[key], abs=1e-5), key
