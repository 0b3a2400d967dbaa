"""bigtrain layers inside a plain torch module are built before fit (or train_on_batch)
makes its optimizer, so they train from the first step, as Keras builds a model before its
optimizer; they used to be built inside the first step, left out of the optimizer, and
silently stayed at their initial weights for the whole first fit."""
import numpy as np
import pytest
import torch
from torch import nn

import bigtrain
from bigtrain.layers import Dense
from bigtrain.losses import CategoricalCrossentropy
from bigtrain.models import Model

X = np.random.default_rng(0).standard_normal((48, 6)).astype("float32")
Y = np.eye(3, dtype="float32")[np.random.default_rng(1).integers(0, 3, 48)]


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Dense(5, activation="relu")
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(self.a(x))


def _model(prebuilt: bool):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    net = Mixed()
    if prebuilt:  # what a user could do by hand: call the module once
        with torch.no_grad():
            net(torch.from_numpy(X[:2]))
    model = Model(net)
    model.compile(optimizer="adam", loss=CategoricalCrossentropy(from_logits=True))
    return model


def _dense_kernel(model):
    return model.net.a.linear.weight.detach().clone()


def test_inner_layer_trains_in_the_first_fit_as_if_built_before():
    built = _model(prebuilt=True)
    start = _dense_kernel(built)
    built.fit(X, Y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    lazy = _model(prebuilt=False)
    lazy.fit(X, Y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert not torch.equal(_dense_kernel(built), start)  # it trained
    for a, b in zip(built.get_weights(), lazy.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_inner_layer_trains_in_the_first_train_on_batch():
    built, lazy = _model(prebuilt=True), _model(prebuilt=False)
    for m in (built, lazy):
        m.train_on_batch(X[:8], Y[:8])
        m.train_on_batch(X[8:16], Y[8:16])
    for a, b in zip(built.get_weights(), lazy.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_stream_cannot_build_them_and_says_how():
    lazy = _model(prebuilt=False)

    def batches():
        for i in range(0, 48, 8):
            yield X[i:i + 8], Y[i:i + 8]
    with pytest.raises(ValueError, match="not built yet.*model\\(x\\[:2\\]\\)"):
        lazy.fit(batches(), epochs=1, verbose=0)
