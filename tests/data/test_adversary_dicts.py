"""Batches keyed by name, as Keras takes them from generators and Datasets: x as a dict by
Input name (extra keys left out) and y as a dict by output name, from a map-style Dataset,
a generator, a list of batches, a re-iterable of batches and validation streams. Each trains
exactly as the same arrays do (whose dict handling is held against Keras in
tests/api/test_data_inputs_keras.py), also on two ranks and with loader workers."""
import numpy as np
import pytest
from torch.utils.data import Dataset

import bigtrain
from bigtrain.layers import Concatenate, Dense, Input
from bigtrain.models import Model

RNG = np.random.default_rng(3)
X = RNG.normal(size=(50, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 3] > 0).astype(np.int64)
R = (X[:, 1:2] * 2).astype(np.float32)
FIT = dict(epochs=2, batch_size=16, shuffle=False, verbose=0)


def _two_inputs():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    a, b = Input(shape=(3,), name="a"), Input(shape=(1,), name="b")
    out = Dense(2, activation="softmax")(Dense(8, activation="relu")(Concatenate()([a, b])))
    model = Model([a, b], out)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", learning_rate=0.1)
    return model


def _two_outputs():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    h = Dense(8, activation="relu")(inp)
    model = Model(inp, [Dense(2, activation="softmax", name="cls")(h), Dense(1, name="reg")(h)])
    model.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"],
                  learning_rate=0.1)
    return model


def _fit(make, x, y=None, **kw):
    model = make()
    history = model.fit(x, y, **{**FIT, **kw})
    return model.get_weights(), history.history


def _same(got, ref, tol=1e-6):
    (w1, h1), (w2, h2) = got, ref
    assert sorted(h1) == sorted(h2)
    for key in h1:
        np.testing.assert_allclose(h1[key], h2[key], atol=tol, err_msg=key)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, atol=tol)


def _xs(rows):
    """x of `rows` as a dict by Input name, in another key order, with a key no Input has."""
    return {"b": X[rows, 3:], "extra": X[rows], "a": X[rows, :3]}


class KeyedInputs(Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return _xs(i), Y[i]


class KeyedTargets(Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return X[i], {"reg": R[i], "cls": Y[i]}


class Reiterable:
    """A tf.data-like source: each iteration starts again; no len()."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _batches():
    return [(_xs(slice(i, i + 16)), Y[i:i + 16]) for i in range(0, len(X), 16)]


@pytest.fixture(scope="module")
def arrays():
    return (_fit(_two_inputs, {"a": X[:, :3], "b": X[:, 3:]}, Y),
            _fit(_two_outputs, X, {"cls": Y, "reg": R}))


def test_dict_inputs_from_a_dataset_a_generator_and_batch_lists(arrays):
    ref = arrays[0]
    _same(_fit(_two_inputs, KeyedInputs()), ref)
    _same(_fit(_two_inputs, KeyedInputs(), workers=1), ref)
    _same(_fit(_two_inputs, iter(_batches() * 2), steps_per_epoch=4, batch_size=None), ref)
    _same(_fit(_two_inputs, _batches(), batch_size=None), ref)
    _same(_fit(_two_inputs, Reiterable(_batches()), batch_size=None), ref)


def test_dict_targets_from_a_dataset_and_a_stream(arrays):
    ref = arrays[1]
    _same(_fit(_two_outputs, KeyedTargets()), ref)
    batches = [(X[i:i + 16], {"cls": Y[i:i + 16], "reg": R[i:i + 16]}) for i in range(0, 50, 16)]
    _same(_fit(_two_outputs, batches, batch_size=None), ref)
    with_val = _fit(_two_outputs, X, {"cls": Y, "reg": R}, validation_data=(X[:20], {
        "cls": Y[:20], "reg": R[:20]}))
    val_stream = iter([(X[i:i + 10], {"reg": R[i:i + 10], "cls": Y[i:i + 10]}) for i in (0, 10)])
    _same(_fit(_two_outputs, X, {"cls": Y, "reg": R}, validation_data=val_stream,
               validation_steps=2), with_val)


def test_a_dict_missing_an_input_is_named_before_training():
    class Missing(KeyedInputs):
        def __getitem__(self, i):
            return {"a": X[i, :3], "c": X[i, 3:]}, Y[i]
    with pytest.raises(ValueError, match=r"keys \['a', 'c'\].*named \['a', 'b'\].*missing \['b'\]"):
        _fit(_two_inputs, Missing())


@pytest.mark.slow
def test_dict_batches_on_two_ranks_match_one_process(arrays):
    ranks = dict(strategy="ddp", devices=2, timeout=60)
    _same(_fit(_two_inputs, KeyedInputs(), **ranks), arrays[0], tol=1e-5)
    _same(_fit(_two_outputs, KeyedTargets(), **ranks), arrays[1], tol=1e-5)
