"""Hugging Face datasets straight into fit: a datasets.Dataset trains exactly like the same
arrays (shuffled, with workers too), a streaming IterableDataset like the arrays in order,
columns map to a multi-input model's named inputs, and a wrong target column is named."""
import datasets
import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Concatenate, Dense, Input
from bigtrain.models import Model
from tests.api.conftest import fresh_seed_model, teacher_data

X, _, IDS = teacher_data(n=160)
COLUMNS = {f"f{i}": X[:, i] for i in range(X.shape[1])}


fresh = fresh_seed_model  # a compiled seed model from seed 0


def _fit(model, x, y=None, **kw):
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, **kw)
    return model.get_weights()


def _diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


def test_hf_dataset_and_stream_train_like_arrays():
    ds = datasets.Dataset.from_dict({**COLUMNS, "label": IDS})
    shuffled = _fit(fresh(), X, IDS)
    assert _diff(shuffled, _fit(fresh(), ds)) == 0.0
    assert _diff(shuffled, _fit(fresh(), ds, workers=1)) == 0.0
    in_order = _fit(fresh(), X, IDS, shuffle=False)
    assert _diff(shuffled, in_order) > 1e-4
    stream = ds.to_iterable_dataset(num_shards=2)
    assert _diff(in_order, _fit(fresh(), stream, "label")) == 0.0


def _two_inputs():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    a, b = Input(shape=(1,), name="a"), Input(shape=(1,), name="b")
    model = Model(inputs=[a, b], outputs=Dense(1)(Concatenate()([a, b])))
    model.compile(optimizer="sgd", loss="mse", learning_rate=0.1)
    return model


def test_columns_map_to_named_inputs():
    a, b = X[:, :1], X[:, 1:2]
    target = (2 * a - b).astype("float32")
    ds = datasets.Dataset.from_dict({"b": b, "noise": X[:, 2], "a": a, "y": target})
    ref = _fit(_two_inputs(), [a, b], target)
    assert _diff(ref, _fit(_two_inputs(), ds, "y")) <= 1e-6
    swapped = _fit(_two_inputs(), [b, a], target)
    assert _diff(ref, swapped) > 1e-4  # which column feeds which input shows


def test_missing_target_column_is_named():
    ds = datasets.Dataset.from_dict({"f0": X[:, 0], "target": IDS})
    with pytest.raises(ValueError, match=r"y='<column>'.*\['f0', 'target'\]"):
        fresh().fit(ds, verbose=0)
    with pytest.raises(ValueError, match="'labels' is not in the dataset"):
        fresh().fit(ds, "labels", verbose=0)
