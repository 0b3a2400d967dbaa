"""Model.save keeps each output's loss with its arguments (label_smoothing, ignore_class,
axis, delta, reduction, from_logits), as Keras's .keras files keep a loss's config: a
loaded model's next fit trains on the loss the saved model trained on."""
from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import bigtrain
from bigtrain import losses as bl
from bigtrain.layers import Dense, Input
from bigtrain.models import Model, load_model

FIT = dict(batch_size=8, verbose=0, shuffle=False)


def _data(n=24):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype("float32")
    ids = rng.integers(0, 3, n)
    return x, ids, np.eye(3, dtype="float32")[ids]


def _model(loss, activation="softmax", **compile_args):
    bigtrain.set_seed(0)
    inp = Input(shape=(5,))
    model = Model(inp, Dense(3, activation=activation)(Dense(4, activation="relu")(inp)))
    model.compile(optimizer="adam", loss=loss, **compile_args)
    return model


def _diff(a, b) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a.get_weights(), b.get_weights()))


def _resumed(make, x, y, path, **load_args):
    """(the model fitted 3 epochs, the one fitted 1 epoch, saved, loaded and fitted 2)."""
    whole, part = make(), make()
    whole.fit(x, y, epochs=3, **FIT)
    part.fit(x, y, epochs=1, **FIT)
    part.save(path)
    loaded = load_model(path, **load_args)
    loaded.fit(x, y, epochs=2, **FIT)
    return whole, loaded


def _saved_compile(path) -> dict:
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["architecture"])["compile"]


CASES = {  # id: (loss, the same loss at its defaults, output activation, one-hot targets)
    "keras_label_smoothing": (keras.losses.CategoricalCrossentropy(label_smoothing=0.3),
                              "categorical_crossentropy", "softmax", True),
    "bigtrain_label_smoothing": (bl.CategoricalCrossentropy(label_smoothing=0.3),
                                 "categorical_crossentropy", "softmax", True),
    "sum_reduction": (keras.losses.SparseCategoricalCrossentropy(reduction="sum"),
                      "sparse_categorical_crossentropy", "softmax", False),
    "ignore_class": (keras.losses.SparseCategoricalCrossentropy(ignore_class=0),
                     "sparse_categorical_crossentropy", "softmax", False),
    "user_from_logits": (keras.losses.CategoricalCrossentropy(from_logits=True),
                         "categorical_crossentropy", "linear", True),
    "huber_delta": (keras.losses.Huber(delta=0.05), "huber", "linear", True),
    "bce_smoothing": (bl.BinaryCrossentropy(label_smoothing=0.4), "binary_crossentropy",
                      "sigmoid", True),
    "cosine_axis": (bl.CosineSimilarity(axis=0), "cosine_similarity", "linear", True),
    "keras_function": (keras.losses.CategoricalFocalCrossentropy(gamma=4.0, alpha=0.6),
                       keras.losses.CategoricalFocalCrossentropy(), "softmax", True),
    "torch_module": (torch.nn.CrossEntropyLoss(label_smoothing=0.3),
                     torch.nn.CrossEntropyLoss(), "linear", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_loaded_model_trains_on_with_the_saved_loss_arguments(tmp_path, case):
    loss, plain, activation, one_hot = CASES[case]
    x, ids, hot = _data()
    y = hot if one_hot else ids
    whole, loaded = _resumed(lambda: _model(loss, activation), x, y, str(tmp_path / "m.bigtrain"))
    assert _diff(whole, loaded) < 1e-6
    # the check tells the loss apart: the same run on the loss at its defaults drifts away
    other = _model(plain, activation)
    other.set_weights(load_model(str(tmp_path / "m.bigtrain")).get_weights())
    other.fit(x, y, epochs=2, **FIT)
    assert _diff(whole, other) > 1e-4


def test_the_file_keeps_the_users_from_logits_not_the_deferred_softmax(tmp_path):
    """compile moves a final softmax into the loss and sets from_logits itself; the file
    keeps what the user gave, and the loaded model defers the softmax again."""
    x, ids, _ = _data()
    model = _model("sparse_categorical_crossentropy")
    assert model.compiled.losses[0].from_logits  # deferred by compile
    model.save(str(tmp_path / "m.bigtrain"))
    saved = _saved_compile(str(tmp_path / "m.bigtrain"))["loss_configs"][0]
    assert saved["from_logits"] is False
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    assert loaded.compiled.losses[0].from_logits and loaded.compiled.deferred
    np.testing.assert_allclose(loaded.predict(x).sum(-1), 1.0, atol=1e-5)  # probabilities
    np.testing.assert_allclose(loaded.evaluate(x, ids), model.evaluate(x, ids), atol=1e-6)


def _two_outputs():
    bigtrain.set_seed(0)
    inp = Input(shape=(5,))
    h = Dense(4, activation="relu")(inp)
    model = Model(inp, [Dense(3, activation="softmax", name="cls")(h),
                        Dense(2, name="reg")(h)])
    model.compile(optimizer="adam",
                  loss={"cls": keras.losses.CategoricalCrossentropy(label_smoothing=0.2),
                        "reg": bl.Huber(delta=0.1, reduction="sum")},
                  loss_weights={"cls": 0.7, "reg": 0.3}, metrics={"cls": ["accuracy"]})
    return model


def test_several_outputs_keep_each_loss_and_weight(tmp_path):
    x, _, hot = _data()
    y = {"cls": hot, "reg": x[:, :2] * 3.0}
    whole, loaded = _resumed(_two_outputs, x, y, str(tmp_path / "m.bigtrain"))
    assert _diff(whole, loaded) < 1e-6
    assert loaded.compiled.metric_names == whole.compiled.metric_names
    a = whole.evaluate(x, y, return_dict=True)
    b = loaded.evaluate(x, y, return_dict=True)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)


def test_matches_keras_after_save_load_fit(tmp_path):
    """Keras's own save/load/fit with label smoothing: the same weights."""
    x, _, hot = _data()
    keras.utils.set_random_seed(0)
    ki = keras.Input((5,))
    km = keras.Model(ki, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(4, activation="relu")(ki)))
    km.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.3))
    model = _model(keras.losses.CategoricalCrossentropy(label_smoothing=0.3))
    model.set_weights(km.get_weights())
    km.fit(x, hot, epochs=1, **FIT)
    model.fit(x, hot, epochs=1, **FIT)
    km.save(str(tmp_path / "k.keras"))
    model.save(str(tmp_path / "m.bigtrain"))
    km2, loaded = keras.models.load_model(str(tmp_path / "k.keras")), \
        load_model(str(tmp_path / "m.bigtrain"))
    km2.fit(x, hot, epochs=2, **FIT)
    loaded.fit(x, hot, epochs=2, **FIT)
    for ours, theirs in zip(loaded.get_weights(), km2.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_file_with_loss_names_only_still_loads(tmp_path):
    """Files written before the loss arguments were kept name each loss alone."""
    x, ids, _ = _data()
    model = _model("sparse_categorical_crossentropy")
    model.fit(x, ids, epochs=1, **FIT)
    path = str(tmp_path / "m.bigtrain")
    model.save(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    arch = json.loads(meta["architecture"])
    arch["compile"].pop("loss_configs", None)
    save_file(load_file(path), path, metadata={**meta, "architecture": json.dumps(arch)})
    loaded = load_model(path)
    assert loaded.compiled is not None
    model.fit(x, ids, epochs=1, **FIT)
    loaded.fit(x, ids, epochs=1, **FIT)
    assert _diff(model, loaded) < 1e-6


def my_loss(y_true, y_pred):
    return ((y_true - y_pred) ** 2).mean(-1)


def test_a_function_of_the_users_needs_custom_objects(tmp_path):
    x, _, hot = _data()
    path = str(tmp_path / "m.bigtrain")
    whole, loaded = _resumed(lambda: _model(my_loss), x, hot, path,
                             custom_objects={"my_loss": my_loss})
    assert _diff(whole, loaded) < 1e-6
    with pytest.warns(UserWarning, match=r"custom_objects=\{'my_loss': my_loss\}"):
        bare = load_model(path)
    assert bare.compiled is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(path, compile=False).compiled is None  # asked for: no warning


def test_a_torch_loss_with_a_tensor_argument_needs_custom_objects(tmp_path):
    x, ids, _ = _data()
    loss = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    path = str(tmp_path / "m.bigtrain")
    whole, loaded = _resumed(lambda: _model(loss, "linear"), x, ids, path,
                             custom_objects={"CrossEntropyLoss": loss})
    assert _diff(whole, loaded) < 1e-6
    with pytest.warns(UserWarning, match="CrossEntropyLoss.*tensor argument"):
        assert load_model(path).compiled is None
