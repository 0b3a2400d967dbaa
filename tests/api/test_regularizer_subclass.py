"""A Regularizer subclass that defines only __call__ (as a Keras one does) works as a
kernel and an activity regularizer: its gradient and differentiable form come from autograd,
so it trains exactly as the built-in L1L2 of the same penalty."""
import numpy as np
import torch

import bigtrain
from bigtrain.api.regularizers import L1L2, Regularizer
from bigtrain.layers import Dense, Input
from bigtrain.models import Model


class Mine(Regularizer):
    def __call__(self, x):
        return 0.01 * x.abs().sum() + 0.02 * x.square().sum()


def _fit(reg):
    bigtrain.set_seed(0)
    bigtrain.clear_session()
    inp = Input(shape=(6,))
    out = Dense(3, kernel_regularizer=reg, activity_regularizer=reg)(inp)
    model = Model(inp, out)
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return history.history["loss"], model.get_weights()


def test_a_subclass_with_only_call_trains_as_the_builtin():
    mine, builtin = _fit(Mine()), _fit(L1L2(l1=0.01, l2=0.02))
    assert np.allclose(mine[0], builtin[0], atol=1e-6), (mine[0], builtin[0])
    for a, b in zip(mine[1], builtin[1]):
        assert np.allclose(a, b, atol=1e-6)


def test_gradient_by_autograd_equals_the_written_out_one():
    w = torch.randn(5, 3)
    assert torch.allclose(Mine().grad(w), L1L2(0.01, 0.02).grad(w))
