"""A bigtrain layer called on its own runs in inference mode, as Keras 3 (torch backend):
Dropout passes its input, BatchNormalization uses its moving statistics, a user's
call(x, training=None) is not told True; training=True still trains, fit still trains in
training mode and leaves the layers in inference mode after, and a torch user's explicit
module.train() still puts the layers inside into training mode."""
import keras
import numpy as np
import torch
from torch import nn

import bigtrain.layers as B
from bigtrain.models import Sequential

X = np.random.default_rng(0).normal(size=(8, 6)).astype("float32") * 3 + 1


def _np(t):
    return t.detach().cpu().numpy()


def _both(make):
    """(Keras output, bigtrain output) of the same layer called directly on X."""
    keras.utils.set_random_seed(0)
    return _np(make(keras.layers)(X)), _np(make(B)(torch.tensor(X)))


def test_dropout_and_batchnorm_called_directly_infer_as_keras():
    for make in (lambda L: L.Dropout(0.5), lambda L: L.BatchNormalization(),
                 lambda L: L.GaussianNoise(1.0), lambda L: L.AlphaDropout(0.5)):
        k, b = _both(make)
        np.testing.assert_allclose(b, k, atol=1e-5)


def test_users_layer_is_not_told_training():
    seen = {}

    def recorder(base, key):
        class Rec(base):
            def call(self, x, training=None):
                seen[key] = bool(training)
                return x
        return Rec()
    recorder(keras.layers.Layer, "keras")(X)
    recorder(B.Layer, "bigtrain")(torch.tensor(X))
    assert seen == {"keras": False, "bigtrain": False}


def test_training_true_fit_and_torch_train_still_train():
    drop = B.Dropout(0.5)
    x = torch.ones(64, 8)
    assert (drop(x, training=True) == 0).any() and not (drop(x) == 0).any()
    bn = B.BatchNormalization()
    model = Sequential([B.Input((6,)), bn, B.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(X, X[:, :1], epochs=1, batch_size=4, verbose=0)
    assert np.abs(bn.get_weights()[2]).sum() > 0  # moving mean moved: training mode
    assert not any(m.training for m in model.net.modules() if isinstance(m, B.Layer))
    plain = nn.Sequential(nn.Linear(8, 8), B.Dropout(0.5))
    plain.train()  # a torch user's explicit training mode reaches the bigtrain layers
    assert (plain(x) == 0).any()
    plain.eval()
    assert not (plain(x) == 0).any()
