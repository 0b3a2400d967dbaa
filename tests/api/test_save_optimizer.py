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
