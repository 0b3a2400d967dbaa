"""evaluate and predict on a torch DataLoader go through the loader's own batches, as
Keras 3 (torch backend) iterates it: the same batch hooks, the same per-batch outputs and
the same values, whatever batch_size says."""
import keras
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bigtrain.layers as B
from bigtrain.callbacks import Callback
from bigtrain.models import Sequential

RNG = np.random.default_rng(0)
X = RNG.normal(size=(50, 3)).astype("float32")
Y = X.sum(1, keepdims=True)


def _recorder(base):
    class Rec(base):
        def __init__(self):
            super().__init__()
            self.test, self.pred = [], []

        def on_test_batch_end(self, batch, logs=None):
            self.test.append(batch)

        def on_predict_batch_end(self, batch, logs=None):
            self.pred.append(np.asarray(logs["outputs"]).shape[0])
    return Rec()


def _pair():
    keras.utils.set_random_seed(0)
    km = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    km.compile("sgd", "mse", metrics=["mae"])
    bm = Sequential([B.Input((3,)), B.Dense(2), B.Dense(1)])
    bm.compile("sgd", "mse", metrics=["mae"])
    bm.set_weights(km.get_weights())
    return km, bm


@pytest.mark.parametrize("batch_size", [None, 8])
def test_evaluate_and_predict_iterate_the_loader(batch_size):
    km, bm = _pair()
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(Y)), batch_size=20)
    kr, br = _recorder(keras.callbacks.Callback), _recorder(Callback)
    kv = km.evaluate(loader, batch_size=batch_size, verbose=0, callbacks=[kr])
    bv = bm.evaluate(loader, batch_size=batch_size, verbose=0, callbacks=[br])
    kp = km.predict(loader, batch_size=batch_size, verbose=0, callbacks=[kr])
    bp = bm.predict(loader, batch_size=batch_size, verbose=0, callbacks=[br])
    assert (br.test, br.pred) == (kr.test, kr.pred) == ([0, 1, 2], [20, 20, 10])
    np.testing.assert_allclose(bv, kv, rtol=1e-5)
    np.testing.assert_allclose(bp, kp, rtol=1e-5, atol=1e-6)
