"""Losses on several processes against one process: a Keras loss keeps its arguments on the
ranks, and a loss that sums over the batch or divides by a count of it (which each rank
would take of its own share) is refused instead of training on a fraction of it."""
import os

import numpy as np
import pytest

import bigtrain.layers as B
import bigtrain.optimizers as bopt
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
RNG = np.random.default_rng(7)
X = RNG.normal(size=(16, 4)).astype("float32")
Y = RNG.normal(size=(16, 2)).astype("float32")
IDS = RNG.integers(0, 2, 16)
FIT = dict(batch_size=8, epochs=1, shuffle=False, verbose=0)
RANKS = dict(strategy="ddp", devices=2, timeout=60)


def _model(loss, activation=None):
    import bigtrain
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = B.Input((4,))
    model = Model(inp, B.Dense(2, activation=activation)(inp))
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss=loss)
    return model


def test_a_keras_loss_keeps_its_arguments_on_the_ranks():
    # Huber's delta is not in Keras's get_config: a pickled keras.losses.Huber trains with 1.0
    one = _model(keras.losses.Huber(delta=0.1))
    want = one.fit(X, Y, **FIT).history["loss"]
    ranks = _model(keras.losses.Huber(delta=0.1))
    np.testing.assert_allclose(ranks.fit(X, Y, **FIT, **RANKS).history["loss"], want, rtol=1e-5)
    for a, b in zip(ranks.get_weights(), one.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _sum_loss(y_true, y_pred):
    return ((y_true - y_pred) ** 2).sum()  # one number: the batch's sum


def test_a_callable_that_sums_over_the_batch_is_refused_when_the_batch_is_split():
    with pytest.raises(Exception, match="_sum_loss returns the batch's sum"):
        _model(_sum_loss).fit(X, Y, **FIT, **RANKS)
    with pytest.raises(ValueError, match="_sum_loss returns the batch's sum"):
        _model(_sum_loss).fit(X, Y, accumulate_steps=2, **FIT)
    _model(_sum_loss).fit(X, Y, **FIT)  # whole batches: the sum is Keras's


@pytest.mark.parametrize("loss,what", [
    (lambda: keras.losses.MeanSquaredError(reduction="sum"), r"sums over the batch \(reduction='sum'\)"),
    (lambda: keras.losses.MeanAbsoluteError(reduction="mean_with_sample_weight"), "sum of sample weights"),
    (lambda: keras.losses.SparseCategoricalCrossentropy(ignore_class=1), "class 1 .ignore_class"),
    (lambda: keras.losses.CosineSimilarity(axis=0), r"batch axis \(axis=0\)"),
])
def test_a_loss_over_the_whole_batch_is_refused_before_any_rank_starts(loss, what):
    y = IDS if "ignore" in what else Y
    with pytest.raises(ValueError, match=f"{what}.*one process only, not on 2"):
        _model(loss()).fit(X, y, **FIT, **RANKS)
    with pytest.raises(ValueError, match=f"{what}.*accumulate_steps=2"):
        _model(loss()).fit(X, y, accumulate_steps=2, **FIT)
