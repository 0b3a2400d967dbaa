"""A learning-rate schedule's step count lives on across fit calls, as Keras's optimizer
`iterations` does, also where a fit ran on several processes (its ranks' optimizer ends with
them): fit(epochs=2) twice trains as fit(epochs=4) once, and as Keras 3 (torch backend)
does, and `model.optimizer.learning_rate` then reads Keras's rate. The other way too: a
multi-process fit after a one-process one starts its ranks at the step count and the
learning rate (ReduceLROnPlateau's) that fit left."""
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import bigtrain  # noqa: E402
import bigtrain.callbacks as bcb  # noqa: E402
import bigtrain.optimizers as bo  # noqa: E402
from bigtrain.layers import Dense, Input  # noqa: E402
from bigtrain.models import Model  # noqa: E402
from bigtrain.optimizers import schedules  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

from tests.engine.carry_data import FIT, LOSS, RANKS, W0, X, Y  # noqa: E402
#: schedule name -> arguments that change the rate within the 16 steps of 4 epochs
SCHEDULES = {"ExponentialDecay": (0.5, 3, 0.5),
             "PiecewiseConstantDecay": ([5], [0.5, 0.05]),
             "CosineDecay": (0.5, 10)}


def bigtrain_fits(schedule: str, *fits: dict):
    """(weights, learning rate) of a bigtrain model after one fit per entry of `fits`
    (fit's keyword arguments: epochs, strategy, ...), all under one compile."""
    bigtrain.clear_session()
    inp = Input(shape=(6,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.set_weights(W0)
    model.compile(optimizer=bo.SGD(getattr(schedules, schedule)(*SCHEDULES[schedule])),
                  loss=LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a multi-process fit's fresh-state note
        for fit in fits:
            model.fit(X, Y, **FIT, **fit)
    return model.get_weights(), float(model.optimizer.learning_rate)


def keras_fit(schedule: str, epochs: int):
    """(weights, learning rate, iterations) of Keras's model after one fit."""
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    model.set_weights(W0)
    rate = getattr(keras.optimizers.schedules, schedule)(*SCHEDULES[schedule])
    model.compile(optimizer=keras.optimizers.SGD(rate), loss=LOSS)
    model.fit(X, Y, epochs=epochs, **FIT)
    return (model.get_weights(), float(model.optimizer.learning_rate),
            int(model.optimizer.iterations))


def assert_same(got, ref):
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("schedule, strategy", [("ExponentialDecay", "ddp"),
                                                ("PiecewiseConstantDecay", "zero2"),
                                                ("CosineDecay", "zero1")])
def test_two_fits_on_ranks_continue_the_schedule_as_keras(schedule, strategy):
    """The second fit restarted the schedule at step 0 (weights 0.14-0.19 from one fit of
    4 epochs; learning_rate read the schedule's first rate, 0.5)."""
    weights, rate, iterations = keras_fit(schedule, epochs=4)
    assert iterations == 16
    once, once_rate = bigtrain_fits(schedule, dict(epochs=4))
    ranks = dict(epochs=2, strategy=strategy, **RANKS)
    twice, twice_rate = bigtrain_fits(schedule, ranks, ranks)
    assert_same(once, weights)
    assert_same(twice, weights)
    assert twice_rate == pytest.approx(rate, rel=1e-6, abs=1e-9)
    assert once_rate == pytest.approx(rate, rel=1e-6, abs=1e-9)


def test_ranks_after_one_process_continue_its_schedule():
    """The ranks built the compiled optimizer afresh: the schedule restarted at step 0."""
    weights, rate, _ = keras_fit("ExponentialDecay", epochs=4)
    got, got_rate = bigtrain_fits("ExponentialDecay", dict(epochs=2),
                                  dict(epochs=2, strategy="ddp", **RANKS))
    assert_same(got, weights)
    assert got_rate == pytest.approx(rate, rel=1e-6)


def test_ranks_after_one_process_keep_its_reduced_rate():
    """ReduceLROnPlateau halved the rate twice in a one-process fit (0.3 -> 0.075); the
    next fit on two ranks trained at 0.3 again and left learning_rate at 0.3. Keras keeps
    the reduced rate on its optimizer; a one-process second fit is the reference."""
    def fits(**second):
        bigtrain.clear_session()
        inp = Input(shape=(6,))
        model = Model(inp, Dense(3, activation="softmax")(inp))
        model.set_weights(W0)
        model.compile(optimizer=bo.SGD(0.3), loss=LOSS)
        # min_delta larger than any improvement: every epoch after the first is a plateau
        plateau = bcb.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=10.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, Y, epochs=3, callbacks=[plateau], **FIT)
            model.fit(X, Y, epochs=2, **FIT, **second)
        return model.get_weights(), float(model.optimizer.learning_rate)

    ref, ref_rate = fits()
    got, got_rate = fits(strategy="ddp", **RANKS)
    assert ref_rate == pytest.approx(0.075)
    assert got_rate == pytest.approx(ref_rate)
    assert_same(got, ref)


def test_a_parameter_server_schedule_goes_on_in_the_next_fit():
    """Under a parameter server ("bsp") the workers count the synchronous steps, one update
    each on the servers, so the next fit continues the schedule as Keras's does (it
    restarted at step 0 before: 0.18 off Keras's weights after two fits of 2 epochs)."""
    ps = dict(epochs=2, strategy="ps", devices=3, timeout=90)
    got, got_rate = bigtrain_fits("ExponentialDecay", ps, ps)
    ref, ref_rate, _ = keras_fit("ExponentialDecay", 4)
    assert got_rate == pytest.approx(ref_rate)
    assert_same(got, ref)
