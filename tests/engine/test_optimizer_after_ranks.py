"""Adam's moments and step count live on across fit calls, as Keras's optimizer does, also
where a fit ran on several processes: rank 0 hands the whole optimizer state back (gathered
from ZeRO partitions and FSDP2 shards), the model keeps it, and the next fit, on one process
or several, continues from it. fit(epochs=2) twice trains as Keras 3 (torch backend)
fit(epochs=4) once."""
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import bigtrain  # noqa: E402
from bigtrain.layers import Dense, Input  # noqa: E402
from bigtrain.models import Model, load_model  # noqa: E402

from tests.engine.carry_data import FIT, LOSS, RANKS, W0, X, Y  # noqa: E402


def bigtrain_model():
    bigtrain.clear_session()
    inp = Input(shape=(6,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.set_weights(W0)
    model.compile(optimizer="adam", loss=LOSS)
    return model


def fits(model, *each: dict):
    """`model` after one fit per entry of `each` (fit's keyword arguments)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "fresh optimizer" note
        for fit in each:
            model.fit(X, Y, **FIT, **fit)
    return model


def keras_weights(epochs: int):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    model.set_weights(W0)
    model.compile(optimizer="adam", loss=LOSS)
    model.fit(X, Y, epochs=epochs, **FIT)
    return model.get_weights()


def assert_same(got, ref):
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero3"])
def test_two_fits_on_ranks_continue_adam_as_keras(strategy):
    """The second fit started a fresh Adam: weights 0.14 from Keras's under ddp."""
    ref = keras_weights(4)
    ranks = dict(epochs=2, strategy=strategy, **RANKS)
    model = fits(bigtrain_model(), ranks, ranks)
    assert_same(model.get_weights(), ref)
    assert int(model.optimizer.state_dict()["state"][0]["step"]) == 16  # Keras's iterations


def test_one_process_fit_continues_the_ranks_adam_and_back():
    """A fit on one process after one on ranks, and ranks after one process."""
    ref = keras_weights(4)
    one = dict(epochs=1)
    ranks = dict(epochs=1, strategy="zero3", **RANKS)
    assert_same(fits(bigtrain_model(), ranks, one, ranks, one).get_weights(), ref)


def test_a_saved_model_keeps_the_ranks_adam(tmp_path):
    """Model.save after a fit on ranks kept no optimizer state (and warned)."""
    ref = keras_weights(4)
    model = fits(bigtrain_model(), dict(epochs=2, strategy="ddp", **RANKS))
    model.save(str(tmp_path / "m.bigtrain"))
    assert_same(fits(load_model(str(tmp_path / "m.bigtrain")), dict(epochs=2)).get_weights(),
                ref)
