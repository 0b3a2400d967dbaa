"""use_ema's moving average (and its step count) comes back from the ranks of a fit on
several processes with the rest of the optimizer state, so that the next fit, on one process
or on several, continues it as a second one-process fit does (Keras keeps the average on
its optimizer across fit calls). Before, the ranks handed back the moments alone and the
next fit restarted the average, with a warning."""
import warnings

import numpy as np
import pytest

import bigtrain
from bigtrain import optimizers as bo
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

TOL = 1e-5


def _data(n=32):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, 12)).astype(np.float32), rng.integers(0, 4, n)


def _compiled():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(12,))
    model = Model(inp, Dense(4, activation="softmax")(Dense(8, activation="relu")(inp)))
    # the average weighs in at every fit's end (the weights become it), and momentum 0.5
    # makes a restarted average differ well beyond TOL
    model.compile(optimizer=bo.Adam(0.05, use_ema=True, ema_momentum=0.5),
                  loss="sparse_categorical_crossentropy")
    return model


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def _fits(runs):
    """Weights after one fit per (strategy, devices) in `runs`, and whether any fit warned
    that the average restarts."""
    model, (x, y) = _compiled(), _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for strategy, devices in runs:
            kwargs = {} if devices == 1 else {"strategy": strategy, "devices": devices}
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, **kwargs)
    restarted = any("average restarts" in str(w.message) for w in caught)
    return _weights(model), restarted


def _assert_close(got, ref):
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, ref))
    assert diff < TOL, diff


@pytest.fixture(scope="module")
def one_process():
    ref, restarted = _fits([(None, 1), (None, 1)])
    assert not restarted
    return ref


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3", "fsdp_offload", "tensor"])
def test_ranks_hand_the_average_to_a_one_process_fit(strategy, one_process):
    got, restarted = _fits([(strategy, 2), (None, 1)])
    assert not restarted
    _assert_close(got, one_process)


def test_ranks_hand_the_average_to_the_next_ranks():
    got, restarted = _fits([("ddp", 2), ("zero3", 2)])
    assert not restarted
    _assert_close(got, _fits([(None, 1), (None, 1)])[0])
