"""Keras's optimizer options held to Keras 3 (torch backend) on one process, with optimizers
beyond Adam: the moving average of `use_ema` continues from one fit call to the next (as
Keras's optimizer keeps it), `exclude_from_weight_decay` leaves the named weights undecayed,
and the Keras arguments bigtrain refuses say what computes the same."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import bigtrain  # noqa: E402
import bigtrain.layers as B  # noqa: E402
from bigtrain import optimizers as bo  # noqa: E402
from bigtrain.api.optimizer_config import spec_config, spec_from_config  # noqa: E402
from bigtrain.models import Model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
TOL = 1e-5
RNG = np.random.default_rng(1)
X = RNG.normal(size=(48, 6)).astype("float32")
Y = RNG.normal(size=(48, 3)).astype("float32")
FIT = dict(batch_size=8, shuffle=False, verbose=0)


def _mlp(L, x):
    return L.Dense(3)(L.LayerNormalization()(L.Dense(7, activation="tanh")(x)))


def _pair():
    keras.utils.set_random_seed(0)
    ki = keras.Input((6,))
    km = keras.Model(ki, _mlp(keras.layers, ki))
    bigtrain.clear_session()
    bi = B.Input((6,))
    bm = Model(bi, _mlp(B, bi))
    bm.set_weights(km.get_weights())
    return km, bm


def _diff(km, bm) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(km.get_weights(), bm.get_weights()))


def _both(name: str, kwargs: dict, exclude=None, fits=(2,)):
    """Keras and bigtrain models after the same fits; `exclude(optimizer, model)` calls
    exclude_from_weight_decay on each before compile."""
    km, bm = _pair()
    ko, bo_ = getattr(keras.optimizers, name)(**kwargs), getattr(bo, name)(**kwargs)
    if exclude is not None:
        exclude(ko, km)
        exclude(bo_, bm)
    km.compile(optimizer=ko, loss="mse")
    bm.compile(optimizer=bo_, loss="mse")
    for epochs in fits:
        km.fit(X, Y, epochs=epochs, **FIT)
        bm.fit(X, Y, epochs=epochs, **FIT)
    return km, bm


EMA = [("RMSprop", dict(learning_rate=0.01, momentum=0.5)),
       ("Lion", dict(learning_rate=0.02)),
       ("SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True))]


@pytest.mark.parametrize("overwrite", [None, 4])
@pytest.mark.parametrize("name,kwargs", EMA)
def test_ema_continues_from_one_fit_to_the_next(name, kwargs, overwrite):
    """The average restarted with each fit (its first step taking the weights themselves):
    two fits differed from Keras's by 1e-3 to 7e-2."""
    kwargs = dict(kwargs, use_ema=True, ema_momentum=0.6, ema_overwrite_frequency=overwrite)
    km, bm = _both(name, kwargs, fits=(2, 1))
    assert _diff(km, bm) <= TOL


def _by_name(optimizer, model):
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma"])


def _by_variable(optimizer, model):
    optimizer.exclude_from_weight_decay(var_list=[model.weights[0], model.weights[4]])


DECAY = [("AdamW", dict(learning_rate=0.05, weight_decay=0.5)),
         ("SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.5)),
         ("Lion", dict(learning_rate=0.01, weight_decay=0.5)),
         ("RMSprop", dict(learning_rate=0.01, weight_decay=0.5))]


@pytest.mark.parametrize("exclude", [_by_name, _by_variable])
@pytest.mark.parametrize("name,kwargs", DECAY)
def test_exclude_from_weight_decay_matches_keras(name, kwargs, exclude):
    km, bm = _both(name, kwargs, exclude)
    assert _diff(km, bm) <= TOL
    _, decayed = _both(name, kwargs)  # the exclusion acts (so the check can fail)
    assert _diff(km, decayed) > 100 * TOL


def test_exclusion_survives_the_optimizer_config():
    spec = bo.AdamW(0.05, weight_decay=0.5)
    spec.exclude_from_weight_decay(var_names=["bias"])
    config = spec_config(spec)
    again = spec_from_config(config)
    assert again.rules.exclude_from_decay.names == ("bias",)
    assert again.rules.weight_decay == 0.5 and again.kwargs["weight_decay"] == 0.0
    _, bm = _pair()
    spec.exclude_from_weight_decay(var_list=[bm.weights[0].value])  # a torch tensor
    assert spec_config(spec) is None  # not named in a file (which then warns), not dropped


def test_exclusion_that_cannot_act_fails_clearly():
    """torch's AdamW decays in its kernel (0.01 by default), which cannot skip weights."""
    import torch
    from bigtrain.api.optimizers import get_optimizer
    spec = get_optimizer(torch.optim.AdamW, learning_rate=0.1)
    with pytest.raises(ValueError, match="param groups"):
        spec.exclude_from_weight_decay(var_names=["bias"])
    with pytest.raises(TypeError, match="var_list"):
        bo.SGD(weight_decay=0.1).exclude_from_weight_decay(var_list=["bias"])
    with pytest.raises(TypeError, match="var_names must be strings"):
        bo.SGD(weight_decay=0.1).exclude_from_weight_decay(var_names=[3])


@pytest.mark.parametrize("make,match", [
    (lambda: bo.RMSprop(loss_scale_factor=128.0), "drop it"),
    (lambda: bo.Lion(gradient_accumulation_steps=4), "accumulate_steps=k"),
])
def test_refused_arguments_say_what_computes_the_same(make, match):
    """loss_scale_factor told users to scale the loss themselves, which changes training
    (Keras unscales the gradients again)."""
    with pytest.raises(ValueError, match=match):
        make()


def test_a_saved_model_continues_the_average_as_keras(tmp_path):
    """The model file keeps use_ema's average: the loaded model's next fit continues it."""
    from bigtrain.models import load_model
    kwargs = dict(learning_rate=0.1, use_ema=True, ema_momentum=0.6, ema_overwrite_frequency=5)
    km, bm = _both("SGD", kwargs, fits=(1,))
    bm.save(str(tmp_path / "m.bigtrain"))
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    km.fit(X, Y, epochs=1, **FIT)
    loaded.fit(X, Y, epochs=1, **FIT)
    assert _diff(km, loaded) <= TOL
