"""Keras's regression, divergence and hinge losses by bigtrain alone: compile(loss="mape"),
"kld", "log_cosh", "hinge", ... were known only through Keras's own function, so without
Keras 3 on the torch backend they were an unknown loss. Each must give Keras's per-sample
values and train as Keras trains, with sample weights and on several processes."""
import os

import numpy as np
import pytest
import torch

import bigtrain
import bigtrain.layers as B
import bigtrain.losses as bl
import bigtrain.optimizers as bopt
from bigtrain.api import losses as api_losses
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

RNG = np.random.default_rng(3)
#: bigtrain's name -> (Keras's function, Keras's class, the other names Keras takes)
NAMES = {
    "mape": ("mean_absolute_percentage_error", "MeanAbsolutePercentageError",
             ("MAPE", "mean_absolute_percentage_error")),
    "msle": ("mean_squared_logarithmic_error", "MeanSquaredLogarithmicError",
             ("MSLE", "mean_squared_logarithmic_error")),
    "kl_divergence": ("kl_divergence", "KLDivergence",
                      ("kld", "KLD", "kullback_leibler_divergence")),
    "poisson": ("poisson", "Poisson", ()),
    "log_cosh": ("log_cosh", "LogCosh", ("logcosh",)),
    "hinge": ("hinge", "Hinge", ()),
    "squared_hinge": ("squared_hinge", "SquaredHinge", ()),
    "categorical_hinge": ("categorical_hinge", "CategoricalHinge", ()),
}


@pytest.fixture
def without_keras(monkeypatch):
    """bigtrain alone: the lookup of Keras's function by name finds nothing, as when Keras 3
    does not import (no KERAS_BACKEND=torch beside TensorFlow)."""
    monkeypatch.setattr(api_losses, "_keras_loss_named", lambda name: None)


def _targets(shape):
    """Targets of every kind the losses meet: real (negative, zero, large), 0/1, -1/1,
    one-hot and probabilities."""
    one_hot = np.eye(shape[-1], dtype="float32")[RNG.integers(0, shape[-1], shape[:-1])]
    real = RNG.normal(size=shape).astype("float32") * 3
    real[0, 0] = 0.0
    return {"real": real, "binary": (RNG.random(shape) > 0.5).astype("float32"),
            "signs": np.where(RNG.random(shape) > 0.5, 1.0, -1.0).astype("float32"),
            "one_hot": one_hot, "soft": RNG.dirichlet(np.ones(shape[-1]), shape[:-1])
            .astype("float32")}


@pytest.mark.parametrize("name", sorted(NAMES))
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6), (12, 1)])
def test_per_sample_values_are_keras_values(name, shape):
    fn = bl.LOSSES[name]
    keras_fn = getattr(keras.losses, NAMES[name][0])
    preds = {"real": RNG.normal(size=shape).astype("float32") * 4,
             "positive": RNG.random(shape).astype("float32"),
             "with_zeros": np.where(RNG.random(shape) > 0.6, 0.0,
                                    RNG.normal(size=shape)).astype("float32")}
    preds["with_zeros"].flat[0] = 0.0
    for y in _targets(shape).values():
        for p in preds.values():
            got = fn(torch.from_numpy(y), torch.from_numpy(p)).numpy()
            want = keras.ops.convert_to_numpy(keras_fn(y, p))
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_hinge_reads_zero_one_labels_as_signs_only_when_all_are():
    # Keras converts the batch's labels when every one is 0 or 1: a -1 among them keeps all
    y = np.array([[0.0, 1.0], [1.0, -1.0]], "float32")
    p = np.array([[0.3, -0.2], [0.5, 0.1]], "float32")
    for name in ("hinge", "squared_hinge"):
        want = keras.ops.convert_to_numpy(getattr(keras.losses, name)(y, p))
        np.testing.assert_allclose(bl.LOSSES[name](torch.tensor(y), torch.tensor(p)), want,
                                   rtol=1e-6)


def _targets_for(name, n=24, units=3):
    if name in ("kl_divergence", "categorical_hinge"):
        return np.eye(units, dtype="float32")[RNG.integers(0, units, n)]
    if name in ("hinge", "squared_hinge"):
        return (RNG.random((n, units)) > 0.5).astype("float32")  # 0/1: Keras makes them -1/1
    return np.abs(RNG.normal(size=(n, units))).astype("float32") + 0.1


ACTIVATION = {"kl_divergence": "softmax", "categorical_hinge": "softmax", "hinge": "tanh",
              "squared_hinge": "tanh", "mape": "softplus", "msle": "softplus",
              "poisson": "softplus", "log_cosh": None}


def _pair(name):
    def body(L, inp):
        return L.Dense(3, activation=ACTIVATION[name])(L.Dense(4, activation="tanh")(inp))
    keras.utils.set_random_seed(0)
    kin = keras.Input((5,))
    kmodel = keras.Model(kin, body(keras.layers, kin))
    bigtrain.clear_session()
    bin_ = B.Input((5,))
    model = Model(bin_, body(B, bin_))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


@pytest.mark.parametrize("name", sorted(NAMES))
def test_fit_with_sample_weights_trains_as_keras_with_bigtrain_alone(name, without_keras):
    x = RNG.normal(size=(24, 5)).astype("float32")
    y = _targets_for(name)
    weights = RNG.random(24).astype("float32") + 0.2
    alias = (NAMES[name][2] or (name,))[-1]
    kmodel, model = _pair(name)
    kmodel.compile(optimizer="sgd", loss=name)
    model.compile(optimizer="sgd", loss=alias)
    fit = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    kh = kmodel.fit(x, y, sample_weight=weights, **fit)
    bh = model.fit(x, y, sample_weight=weights, **fit)
    np.testing.assert_allclose(bh.history["loss"], kh.history["loss"], rtol=1e-5, atol=1e-6)
    for got, want in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0),
                               kmodel.evaluate(x, y, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_the_classes_and_keras_objects_are_bigtrain_losses(name, without_keras):
    fn_name, cls_name, aliases = NAMES[name]
    for alias in (name, *aliases):
        assert bl.get(alias).name == name
    assert getattr(bl, fn_name) is bl.LOSSES[name]
    ours = getattr(bl, cls_name)(reduction="sum")
    assert (ours.name, ours.reduction) == (name, "sum")
    theirs = bl.get(getattr(keras.losses, cls_name)(reduction="sum"))
    assert (theirs.name, theirs.reduction) == (name, "sum")  # bigtrain's own function
    y, p = torch.from_numpy(_targets_for(name, 6)), torch.rand(6, 3)
    want = keras.ops.convert_to_numpy(getattr(keras.losses, cls_name)(reduction="sum")(
        y.numpy(), p.numpy()))
    np.testing.assert_allclose(float(theirs(y, p)), want, rtol=1e-6)


def test_a_keras_only_name_says_how_to_run_it(without_keras):
    with pytest.raises(ValueError, match="unknown loss 'dice'.*KERAS_BACKEND=torch"):
        bl.get("dice")
    with pytest.raises(ValueError, match="unknown loss 'mapee'; valid names: .*mape"):
        bl.get("mapee")


@pytest.mark.parametrize("name", ["hinge", "kl_divergence"])
def test_two_processes_train_as_one(name):
    x = RNG.normal(size=(16, 5)).astype("float32")
    y = _targets_for(name, 16)

    def run(**extra):
        bigtrain.clear_session()
        bigtrain.set_seed(0)
        inp = B.Input((5,))
        model = Model(inp, B.Dense(3, activation=ACTIVATION[name])(inp))
        model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss=name)
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, **extra)
        return history.history["loss"], model.get_weights()
    one_loss, one_weights = run()
    ranks_loss, ranks_weights = run(strategy="ddp", devices=2, timeout=60)
    np.testing.assert_allclose(ranks_loss, one_loss, rtol=1e-5)
    for a, b in zip(ranks_weights, one_weights):
        np.testing.assert_allclose(a, b, atol=1e-6)
