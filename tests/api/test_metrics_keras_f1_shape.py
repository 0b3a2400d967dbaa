"""F1Score / FBetaScore with average=None give one score per class, as Keras: a list also
when the output has a single column (a sigmoid output), in the History and from result()."""
import os

import numpy as np
import pytest
import torch

import bigtrain.layers as B
import bigtrain.metrics as bm
import bigtrain.optimizers as bopt
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
RNG = np.random.default_rng(7)
X = RNG.normal(size=(24, 3)).astype("float32")
Y = (X[:, :1] > 0).astype("float32")
P = RNG.uniform(size=(24, 1)).astype("float32")


@pytest.mark.parametrize("make", [lambda m: m.F1Score(threshold=0.5),
                                  lambda m: m.FBetaScore(beta=2.0, threshold=0.4)])
def test_one_column_gives_a_list_of_one_score_as_keras(make):
    theirs = make(keras.metrics)
    theirs.update_state(Y, P)
    ours = make(bm)
    ours.reset("cpu")
    ours.update(torch.from_numpy(Y), torch.from_numpy(P))
    want = np.asarray(theirs.result())
    got = np.asarray(ours.result())
    assert got.shape == want.shape == (1,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_history_holds_the_list_keras_holds():
    keras.utils.set_random_seed(0)
    ki = keras.Input((3,))
    kmodel = keras.Model(ki, keras.layers.Dense(1, activation="sigmoid")(ki))
    bi = B.Input((3,))
    model = Model(bi, B.Dense(1, activation="sigmoid")(bi))
    model.set_weights(kmodel.get_weights())
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy",
                   metrics=[keras.metrics.F1Score(threshold=0.5, name="f1")])
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss="binary_crossentropy",
                  metrics=[bm.F1Score(threshold=0.5, name="f1")])
    fit = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    want = kmodel.fit(X, Y, **fit).history["f1"]
    got = model.fit(X, Y, **fit).history["f1"]
    assert np.asarray(got).shape == np.asarray(want).shape == (2, 1)
    np.testing.assert_allclose(np.asarray(got, dtype="float64"),
                               np.asarray(want, dtype="float64"), rtol=1e-5)
