"""Every Keras optimizer bigtrain offers, by name and by class with non-default arguments,
held to Keras 3 (torch backend): the weights after 12 steps agree to 1e-5. Lion, Ftrl and
Lamb are Keras's own rules (bigtrain.api.optimizer_kernels); the others also check Keras's
common arguments (weight_decay, clipping, EMA) and amsgrad."""
import keras
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain import optimizers as bo
from bigtrain.api.optimizer_kernels import Lamb as LambRule
from bigtrain.models import Model

RNG = np.random.default_rng(1)
X = RNG.normal(size=(48, 6)).astype("float32")
Y = RNG.normal(size=(48, 3)).astype("float32")


def _mlp(L, x):
    return L.Dense(3)(L.Dense(7, activation="tanh")(x))


def _fit_both(keras_opt, bigtrain_opt, epochs=2):
    """Weights before, after Keras's fit and after bigtrain's: 12 steps of 8 rows."""
    keras.utils.set_random_seed(0)
    ki = keras.Input((6,))
    km = keras.Model(ki, _mlp(keras.layers, ki))
    bi = B.Input((6,))
    bm = Model(bi, _mlp(B, bi))
    bm.set_weights(km.get_weights())
    w0 = km.get_weights()
    km.compile(optimizer=keras_opt, loss="mse")
    bm.compile(optimizer=bigtrain_opt, loss="mse")
    km.fit(X, Y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)
    bm.fit(X, Y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)
    return w0, km.get_weights(), bm.get_weights()


def _assert_same(w0, wk, wb, atol=1e-5):
    moved = False
    for a, k, b in zip(w0, wk, wb):
        moved |= not np.array_equal(a, k)
        np.testing.assert_allclose(b, k, atol=atol, rtol=0)
    assert moved, "training did not move the weights: the check could not fail"


@pytest.mark.parametrize("name", ["lion", "ftrl", "lamb", "sgd", "adam", "adamw", "rmsprop",
                                  "adagrad", "adadelta", "adamax", "nadam"])
def test_every_name_matches_keras(name):
    # Keras's optimizers.get does not know "lamb"; its class is the reference
    _assert_same(*_fit_both(keras.optimizers.Lamb() if name == "lamb" else name, name))


CLASSES = [
    ("Lion", dict(learning_rate=0.01)),
    ("Lion", dict(learning_rate=0.003, beta_1=0.8, beta_2=0.95, weight_decay=0.1)),
    ("Ftrl", dict(learning_rate=0.1)),
    ("Ftrl", dict(learning_rate=0.2, learning_rate_power=-0.7, initial_accumulator_value=0.3,
                  l1_regularization_strength=0.01, l2_regularization_strength=0.02,
                  l2_shrinkage_regularization_strength=0.03, beta=0.5)),
    ("Lamb", dict(learning_rate=0.01)),
    ("Lamb", dict(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-4,
                  clipnorm=0.5)),
    ("SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(learning_rate=0.1, global_clipnorm=0.3)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True)),
    ("Adam", dict(learning_rate=0.01, beta_1=0.5, clipvalue=0.05, use_ema=True)),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.2, amsgrad=True)),
    ("RMSprop", dict(learning_rate=0.01, rho=0.8, weight_decay=0.1, clipnorm=0.2)),
    ("Adagrad", dict(learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-3,
                     weight_decay=0.05)),
    ("Adadelta", dict(learning_rate=1.0, rho=0.9, epsilon=1e-5)),
    ("Adamax", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, global_clipnorm=0.5)),
    ("Nadam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, weight_decay=0.1)),
]


@pytest.mark.parametrize("cls,kwargs", CLASSES, ids=[f"{c}-{i}" for i, (c, _) in
                                                     enumerate(CLASSES)])
def test_classes_with_arguments_match_keras(cls, kwargs):
    _assert_same(*_fit_both(getattr(keras.optimizers, cls)(**kwargs),
                            getattr(bo, cls)(**kwargs)))


def test_lamb_trust_ratio_is_one_for_a_zero_weight():
    """|p| = 0 (a fresh bias): Lamb takes Adam's plain step, as Keras."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = LambRule([p], lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), -0.1 * np.sign([1.0, -2.0, 0.5]),
                               atol=1e-5)


@pytest.mark.parametrize("make,error,match", [
    (lambda: bo.Adam(gradient_accumulation_steps=4), ValueError, "batch_size"),
    (lambda: bo.Lion(loss_scale_factor=128.0), ValueError, "loss_scale_factor"),
    (lambda: bo.Adam(foo=1), TypeError, "foo"),
    (lambda: bo.Lion(beta_1=0.0).build([torch.nn.Parameter(torch.zeros(1))]), ValueError,
     "beta_1"),
    (lambda: bo.Ftrl(learning_rate_power=0.5).build([torch.nn.Parameter(torch.zeros(1))]),
     ValueError, "learning_rate_power"),
    (lambda: bo.get("muon"), ValueError, "not offered"),
])
def test_unsupported_arguments_fail_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_keras_name_argument_is_accepted():
    assert bo.Adam(name="opt", loss_scale_factor=None).learning_rate == pytest.approx(1e-3)
