"""ModelCheckpoint(save_freq=<batches>) on two ranks, as Keras saves every N batches: rank 0
writes the whole model at the same batches as one process does, with the same weights,
also where the strategy splits the weights over the ranks (they join the gather)."""
import os

import numpy as np
import pytest

import bigtrain
import bigtrain.layers as B
from bigtrain.callbacks import ModelCheckpoint
from bigtrain.models import Model

RNG = np.random.default_rng(4)
X = RNG.normal(size=(24, 5)).astype("float32")
Y = RNG.normal(size=(24, 3)).astype("float32")
FIT = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)  # 3 batches an epoch
# every 2 batches, counted across epochs: epoch 1 batch 2, epoch 2 batches 1 and 3
SAVED = ["w-1-2.weights", "w-2-1.weights", "w-2-3.weights"]


def _model() -> Model:
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = B.Input((5,))
    model = Model(inp, B.Dense(3)(B.Dense(4, activation="tanh")(inp)))
    model.compile(optimizer="sgd", learning_rate=0.1, loss="mse")
    return model


def _saved(folder, **fit) -> list:
    model = _model()
    path = os.path.join(folder, "w-{epoch}-{batch}.weights")
    model.fit(X, Y, callbacks=[ModelCheckpoint(path, save_freq=2, save_weights_only=True)],
              **FIT, **fit)
    assert sorted(os.listdir(folder)) == SAVED
    weights = []
    for name in SAVED:
        reader = _model()
        reader.load_weights(os.path.join(folder, name))
        weights.append(reader.get_weights())
    return weights


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_ranks_save_every_n_batches_as_one_process(tmp_path, strategy):
    want = _saved(str(tmp_path / "one"))
    got = _saved(str(tmp_path / "two"), strategy=strategy, devices=2, timeout=60)
    for saved_one, saved_two in zip(want, got):
        for a, b in zip(saved_two, saved_one):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(want[0][0], want[-1][0])  # the saves hold different steps
