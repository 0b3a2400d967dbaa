"""fit's History against Keras 3 (torch backend), same weights and data: a History the
user passes is the one fit fills and returns, across several fits; the epoch a NaN/Inf
loss stops logs the loss Keras's TerminateOnNaN logs (the bad batch's, inf stays inf)."""
import keras
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain import optimizers as bo
from bigtrain.callbacks import History
from bigtrain.models import Sequential

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(64, 3)) * 30).astype("float32")
Y = X.sum(1, keepdims=True)


def _pair(lr=0.01, loss="mse"):
    keras.utils.set_random_seed(0)
    km = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    km.compile(keras.optimizers.SGD(lr), loss)
    bm = Sequential([B.Input((3,)), B.Dense(1)])
    bm.compile(bo.SGD(lr), loss)
    bm.set_weights(km.get_weights())
    return km, bm


def test_users_history_is_returned_and_kept_across_fits():
    km, bm = _pair(lr=1e-5)
    kh, bh = keras.callbacks.History(), History()
    runs = []
    for epochs in (2, 3):
        kr = km.fit(X, Y, epochs=epochs, batch_size=16, callbacks=[kh], verbose=0,
                    shuffle=False)
        br = bm.fit(X, Y, epochs=epochs, batch_size=16, callbacks=[bh], verbose=0,
                    shuffle=False)
        runs.append((kr is kh, km.history is kh, br is bh, bm.history is bh))
        assert bh.epoch == kh.epoch
        assert len(bh.history["loss"]) == len(kh.history["loss"])
        np.testing.assert_allclose(bh.history["loss"], kh.history["loss"], rtol=1e-4)
    assert runs == [(True, True, True, True)] * 2


def test_own_history_without_user_history_is_fresh_each_fit():
    km, bm = _pair(lr=1e-5)
    kr1 = km.fit(X, Y, epochs=2, verbose=0, shuffle=False)
    br1 = bm.fit(X, Y, epochs=2, verbose=0, shuffle=False)
    kr2 = km.fit(X, Y, epochs=1, verbose=0, shuffle=False)
    br2 = bm.fit(X, Y, epochs=1, verbose=0, shuffle=False)
    assert (kr1 is kr2, len(kr2.history["loss"])) == (br1 is br2, len(br2.history["loss"]))


def _sqrt_loss(y_true, y_pred):
    """sqrt of a value that turns negative as the weights move: NaN, not Inf, at that batch."""
    return torch.sqrt(torch.mean(y_pred - y_true) + 200.0)


@pytest.mark.parametrize("lr, loss", [(1.0, "mse"), (50.0, _sqrt_loss)],
                         ids=["inf", "nan"])
def test_stopped_epoch_logs_the_bad_batchs_loss(lr, loss):
    km, bm = _pair(lr=lr, loss=loss)
    kh = km.fit(X, Y, epochs=3, batch_size=4, verbose=0, shuffle=False,
                callbacks=[keras.callbacks.TerminateOnNaN()])
    bh = bm.fit(X, Y, epochs=3, batch_size=4, verbose=0, shuffle=False)
    assert bh.stop_reason == "nan_loss" and bh.epoch == kh.epoch == [0]
    k, b = kh.history["loss"][0], bh.history["loss"][0]
    assert not np.isfinite(k)
    assert str(float(b)) == str(float(k))  # "inf", "-inf" or "nan" alike
