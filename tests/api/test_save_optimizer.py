"""Model.save keeps the optimizer state, as Keras's .keras files do: a loaded model's next fit
continues exactly as the saved model's would (Adam's moments and step count included)."""
from __future__ import annotations

import json
import pickle
import warnings

import keras
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import bigtrain
from bigtrain.callbacks import Callback
from bigtrain.layers import Dense, Input
from bigtrain.models import Model, load_model

FIT = dict(batch_size=8, verbose=0, shuffle=False)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(24, 5)).astype("float32"), rng.integers(0, 3, 24)


def _model(optimizer="adam", weights=None):
    bigtrain.set_seed(0)
    inp = Input(shape=(5,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(4, activation="relu")(inp)))
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def _diff(a: Model, b: Model) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "rmsprop", "nadam", "ftrl", "lion", "adagrad"])
def test_a_loaded_model_trains_on_as_the_saved_one_would(tmp_path, optimizer):
    x, y = _data()
    model = _model(optimizer)
    model.fit(x, y, epochs=1, **FIT)
    model.save(str(tmp_path / "m.bigtrain"))
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    model.fit(x, y, epochs=1, **FIT)
    loaded.fit(x, y, epochs=1, **FIT)
    assert _diff(model, loaded) == 0.0


def test_save_load_fit_matches_keras(tmp_path):
    x, y = _data()
    keras.utils.set_random_seed(0)
    ki = keras.Input((5,))
    km = keras.Model(ki, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(4, activation="relu")(ki)))
    km.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model = _model("adam", weights=km.get_weights())
    km.fit(x, y, epochs=2, **FIT)
    model.fit(x, y, epochs=2, **FIT)
    km.save(str(tmp_path / "k.keras"))
    model.save(str(tmp_path / "m.bigtrain"))
    km2, loaded = keras.models.load_model(str(tmp_path / "k.keras")), \
        load_model(str(tmp_path / "m.bigtrain"))
    km2.fit(x, y, epochs=2, **FIT)
    loaded.fit(x, y, epochs=2, **FIT)
    for ours, theirs in zip(loaded.get_weights(), km2.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    fresh = _model("adam", weights=model.get_weights())  # what a lost state would give
    fresh.fit(x, y, epochs=2, **FIT)
    assert _diff(fresh, loaded) > 1e-4


def test_include_optimizer_false_starts_a_fresh_optimizer(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, **FIT)
    model.save(str(tmp_path / "m.bigtrain"), include_optimizer=False)
    assert not any(k.startswith("optim.") for k in load_file(str(tmp_path / "m.bigtrain")))
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    fresh = _model(weights=model.get_weights())
    loaded.fit(x, y, epochs=1, **FIT)
    fresh.fit(x, y, epochs=1, **FIT)
    assert _diff(loaded, fresh) == 0.0


def test_a_file_without_optimizer_state_still_loads(tmp_path):
    """As Model.save wrote it before it kept the optimizer."""
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, **FIT)
    model.save(str(tmp_path / "new.bigtrain"))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "new.bigtrain"), framework="pt") as f:
        meta = dict(f.metadata())
    keys = json.loads(meta.pop("optimizer"))["keys"]
    weights = {k: v for k, v in load_file(str(tmp_path / "new.bigtrain")).items()
               if k not in keys}
    save_file(weights, str(tmp_path / "old.bigtrain"), metadata=meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(str(tmp_path / "old.bigtrain"))
        loaded.fit(x, y, epochs=1, **FIT)
    fresh = _model(weights=model.get_weights())
    fresh.fit(x, y, epochs=1, **FIT)
    assert _diff(loaded, fresh) == 0.0


def test_loading_never_unpickles(tmp_path, monkeypatch):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, **FIT)
    model.save(str(tmp_path / "m.bigtrain"))

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")
    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    assert loaded.carry().optimizer.state  # the state came back


class _SaveAfterFirstEpoch(Callback):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.save(self.path)


def test_a_callback_saving_mid_fit_keeps_the_running_optimizer(tmp_path):
    x, y = _data()
    model, path = _model(), str(tmp_path / "m.bigtrain")
    model.fit(x, y, epochs=2, callbacks=[_SaveAfterFirstEpoch(path)], **FIT)
    loaded = load_model(path)
    loaded.fit(x, y, epochs=1, **FIT)
    assert _diff(model, loaded) == 0.0


def test_after_a_multi_process_fit_save_says_the_state_is_not_kept(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, **FIT)
    model.keep_optimizer(None)  # what a fit on several processes leaves (launch.runner)
    with pytest.warns(UserWarning, match="keeps no optimizer state"):
        model.save(str(tmp_path / "m.bigtrain"))
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    with pytest.warns(UserWarning, match="fresh Adam state"):  # as the saved model's fit
        loaded.fit(x, y, epochs=1, **FIT)


def test_load_weights_reads_a_model_file_with_optimizer_state(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, **FIT)
    model.save(str(tmp_path / "m.bigtrain"))
    other = _model()
    other.load_weights(str(tmp_path / "m.bigtrain"))
    assert _diff(model, other) == 0.0


def _keras_optimizers():
    from bigtrain import optimizers as O
    from bigtrain.optimizers.schedules import ExponentialDecay
    return {"sgd momentum nesterov": O.SGD(0.05, momentum=0.9, nesterov=True),
            "adam betas": O.Adam(0.01, beta_1=0.5, beta_2=0.9, epsilon=1e-3),
            "adamw clipnorm": O.AdamW(0.01, weight_decay=0.1, clipnorm=0.1),
            "rmsprop momentum": O.RMSprop(0.01, rho=0.5, momentum=0.5),
            "adam ema": O.Adam(0.01, use_ema=True, ema_momentum=0.5),
            "adam schedule": O.Adam(ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5))}


@pytest.mark.parametrize("fitted", [False, True])
@pytest.mark.parametrize("name", list(_keras_optimizers()))
def test_a_loaded_model_keeps_every_optimizer_setting(tmp_path, name, fitted):
    """A file kept the optimizer's name and rate alone: SGD came back without momentum,
    Adam with default betas, AdamW without clipping, EMA off, a schedule frozen at its
    last rate (weights 0.01-0.31 off the saved model's after two more epochs)."""
    x, y = _data()
    model = _model(_keras_optimizers()[name])
    if fitted:
        model.fit(x, y, epochs=1, **FIT)
    model.save(str(tmp_path / "m.bigtrain"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out
        loaded = load_model(str(tmp_path / "m.bigtrain"))
    model.fit(x, y, epochs=2, **FIT)
    loaded.fit(x, y, epochs=2, **FIT)
    assert _diff(model, loaded) < 1e-7


def test_a_schedule_of_the_users_own_reloads_through_custom_objects(tmp_path):
    from bigtrain.optimizers import SGD
    from bigtrain.optimizers.schedules import LearningRateSchedule

    class Halving(LearningRateSchedule):
        def __init__(self, rate):
            self.rate = rate

        def __call__(self, step):
            return self.rate * 0.5 ** step

        def get_config(self):
            return {"rate": self.rate}
    x, y = _data()
    model = _model(SGD(Halving(0.2)))
    model.fit(x, y, epochs=1, **FIT)
    model.save(str(tmp_path / "m.bigtrain"))
    with pytest.raises(ValueError, match=r"custom_objects=\{'Halving': Halving\}"):
        load_model(str(tmp_path / "m.bigtrain"))
    loaded = load_model(str(tmp_path / "m.bigtrain"), custom_objects={"Halving": Halving})
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.2 * 0.5 ** 3)
    model.fit(x, y, epochs=1, **FIT)
    loaded.fit(x, y, epochs=1, **FIT)
    assert _diff(model, loaded) < 1e-7


def test_a_torch_optimizer_class_of_the_users_own_keeps_name_and_rate_with_a_warning(tmp_path):
    class MySGD(torch.optim.SGD):
        pass
    model = _model(MySGD)
    model.compile(optimizer=MySGD, loss="sparse_categorical_crossentropy", learning_rate=0.1)
    with pytest.warns(UserWarning, match="keeps only the optimizer's name"):
        model.save(str(tmp_path / "m.bigtrain"))


def test_checkpoints_leave_a_stateless_optimizers_schedule_alone(tmp_path):
    """torch's state reader runs a zero step on an optimizer without state (SGD without
    momentum); the schedule's hook counted it, so each checkpoint shifted the schedule one
    step (weights 0.011 off a fit without checkpoints after 3 epochs)."""
    from bigtrain.callbacks import ModelCheckpoint
    from bigtrain.optimizers import SGD
    from bigtrain.optimizers.schedules import ExponentialDecay
    x, y = _data()

    def run(**kw):
        model = _model(SGD(ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)))
        model.fit(x, y, epochs=3, **FIT, **kw)
        return model
    plain = run()
    assert _diff(plain, run(checkpoint_dir=str(tmp_path / "ck"))) == 0.0
    assert _diff(plain, run(callbacks=[ModelCheckpoint(str(tmp_path / "m.bigtrain"))])) == 0.0
