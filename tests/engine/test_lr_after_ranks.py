"""After a fit on several processes the caller's model keeps the learning rate the ranks
ended with (Keras's optimizer keeps its reduced `learning_rate`), so the next fit continues
from it as after a one-process fit."""
import warnings

import numpy as np
import torch

import bigtrain.callbacks as bcb
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = (X @ RNG.normal(size=(6, 3))).argmax(1).astype("int64")


def fit_twice(**where):
    """(rate after a 3-epoch fit whose plateau callback halves it twice, weights after
    a second 2-epoch fit of the same model)."""
    torch.manual_seed(0)
    i = Input(shape=(6,))
    m = Model(i, Dense(3, activation="softmax")(i))
    m.compile(optimizer="sgd", learning_rate=0.3, loss="sparse_categorical_crossentropy")
    # min_delta larger than any improvement: every epoch after the first (which improves on
    # no loss at all) is a plateau, and the rate halves
    plateau = bcb.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=10.0)
    fit = dict(batch_size=8, shuffle=False, verbose=0, **where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a multi-process fit's fresh-state note
        m.fit(X, Y, epochs=3, callbacks=[plateau], **fit)
        rate = float(m.optimizer.learning_rate)
        m.fit(X, Y, epochs=2, **fit)
    return rate, [w.copy() for w in m.get_weights()]


def test_two_ranks_keep_the_reduced_rate_as_one_process():
    rate, weights = fit_twice()
    assert abs(rate - 0.075) < 1e-9  # 0.3 halved after epochs 2 and 3 (as Keras)
    ddp_rate, ddp_weights = fit_twice(strategy="ddp", devices=2)
    assert abs(ddp_rate - rate) < 1e-9
    for got, ref in zip(ddp_weights, weights):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
