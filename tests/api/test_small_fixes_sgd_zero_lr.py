"""Keras 3's SGD with momentum through a learning rate of exactly 0 mid-training, against
Keras itself, weights compared after every step. Keras keeps moving at lr = 0
(m = momentum * m; p += m); bigtrain skipped that step, and the following step scaled its
momentum buffers by 0 / lr, forgetting the momentum."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import bigtrain.optimizers as bo  # noqa: E402
from bigtrain.callbacks import Callback, LearningRateScheduler  # noqa: E402
from tests.api.test_keras_lr import _pair  # noqa: E402  (Keras and bigtrain, same weights)

pytestmark = pytest.mark.filterwarnings("ignore")

RATES = [0.1, 0.1, 0.0, 0.1, 0.05, 0.0, 0.0, 0.1]
rng = np.random.default_rng(0)
X = rng.normal(size=(16, 12)).astype("float32")  # one batch: one step per epoch
Y = rng.integers(0, 4, 16)


def _recorder(base, seen):
    class Record(base):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([np.array(w) for w in self.model.get_weights()])
    return Record()


def _steps(model, optimizer, scheduler, base):
    """The model's weights after each of len(RATES) steps at those learning rates."""
    seen = []
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(X, Y, batch_size=16, epochs=len(RATES), shuffle=False, verbose=0,
              callbacks=[scheduler(lambda epoch, lr: RATES[epoch]), _recorder(base, seen)])
    return seen


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_through_a_zero_learning_rate_matches_keras_every_step(nesterov):
    k, b = _pair()
    want = _steps(k, keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov),
                  keras.callbacks.LearningRateScheduler, keras.callbacks.Callback)
    got = _steps(b, bo.SGD(0.1, momentum=0.9, nesterov=nesterov), LearningRateScheduler,
                 Callback)
    assert not np.allclose(want[2][0], want[1][0])  # Keras moves at lr = 0
    for step, (a, c) in enumerate(zip(want, got)):
        for wa, wc in zip(a, c):
            np.testing.assert_allclose(wc, wa, atol=2e-6, err_msg=f"step {step}")


def test_sgd_zero_learning_rate_step_keeps_the_gradients():
    """The zero-lr step sets the gradients aside from torch's step and gives them back."""
    import torch
    w = torch.nn.Parameter(torch.ones(3))
    opt = bo.SGD(0.1, momentum=0.9).build([w])
    w.grad = torch.full((3,), 2.0)
    opt.step()
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    assert torch.equal(w.grad, torch.full((3,), 2.0))
