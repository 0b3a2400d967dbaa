"""A checkpoint resumes into the same model built again under other automatic layer names
(a notebook cell run twice makes dense_2, dense_3 of what the checkpoint calls dense,
dense_1); a model of another structure still gets the error naming what differs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.engine.checkpoint import CheckpointError
from bigtrain.engine.checkpoint_state import auto_name_pairs
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

FIT = dict(batch_size=10, verbose=0)
F32 = torch.float32


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 6)).astype("float32"), rng.integers(0, 3, 40)


def _model(seed=0, hidden=5):
    bigtrain.set_seed(seed)
    inp = Input(shape=(6,))
    out = Dense(3, activation="softmax")(Dense(hidden, activation="relu")(inp))
    model = Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _names(model) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, Dense)]


def test_a_rebuilt_model_resumes_under_other_automatic_names(tmp_path):
    x, y = _data()
    bigtrain.clear_session()
    reference = _model()
    reference.fit(x, y, epochs=2, **FIT)
    first = _model()
    first.fit(x, y, epochs=1, checkpoint_dir=str(tmp_path), **FIT)
    again = _model(seed=1)  # other weights and other names, as after re-running a cell
    assert _names(again) != _names(first)
    again.fit(x, y, epochs=2, checkpoint_dir=str(tmp_path), **FIT)
    for ours, theirs in zip(again.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_a_model_of_another_structure_still_fails_clearly(tmp_path):
    x, y = _data()
    _model().fit(x, y, epochs=1, checkpoint_dir=str(tmp_path), **FIT)
    with pytest.raises(CheckpointError, match="does not fit this model") as err:
        _model(hidden=7).fit(x, y, epochs=2, checkpoint_dir=str(tmp_path), **FIT)
    assert "(7, 6)" in str(err.value)


def test_layers_built_in_another_order_are_not_matched(tmp_path):
    """Layers of a kind pair in creation order: `_model` makes the head (3 units) before
    the hidden layer (5 units, its argument); made the other way round each would pair
    with the other's shapes, which is refused rather than loaded."""
    x, y = _data()
    _model().fit(x, y, epochs=1, checkpoint_dir=str(tmp_path), **FIT)
    inp, hidden, head = Input(shape=(6,)), Dense(5), Dense(3, activation="softmax")
    swapped = Model(inp, head(hidden(inp)))
    swapped.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        swapped.fit(x, y, epochs=2, checkpoint_dir=str(tmp_path), **FIT)


def test_auto_name_pairs():
    ckpt = {"model.layers.dense.w": ((4, 6), F32), "model.layers.dense_1.w": ((3, 4), F32),
            "model.layers.head.w": ((3,), F32)}
    ours = {"model.layers.dense_2.w": ((4, 6), F32), "model.layers.dense_3.w": ((3, 4), F32),
            "model.layers.head.w": ((3,), F32)}
    assert auto_name_pairs(ours, ckpt) == {"model.layers.dense_2.w": "model.layers.dense.w",
                                           "model.layers.dense_3.w": "model.layers.dense_1.w",
                                           "model.layers.head.w": "model.layers.head.w"}
    assert auto_name_pairs({**ours, "model.layers.dense_3.w": ((3, 4), torch.float16)},
                           ckpt) is None  # another dtype
    assert auto_name_pairs({k: v for k, v in ours.items() if "head" not in k}, ckpt) is None
    named = {"model.layers.body.w": v for k, v in ours.items() if "head" in k}
    assert auto_name_pairs({**ours, **named}, ckpt) is None  # user names must be equal


def test_load_weights_matches_by_order_when_names_shift_onto_other_shapes(tmp_path):
    """The file's dense_1 and this model's dense_1 are different layers of other shapes:
    the same structure all the same."""
    bigtrain.clear_session()
    Dense(1)  # takes the name "dense"
    saved = _model()
    assert sorted(_names(saved)) == ["dense_1", "dense_2"]
    saved.save_weights(str(tmp_path / "w.safetensors"))
    bigtrain.clear_session()
    model = _model(seed=1)
    assert sorted(_names(model)) == ["dense", "dense_1"]
    model.load_weights(str(tmp_path / "w.safetensors"))
    for ours, theirs in zip(model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
