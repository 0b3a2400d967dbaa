"""fit's data as Keras 3 takes it, against Keras (KERAS_BACKEND=torch) with the same weights:
integer inputs, dict inputs with extra keys, lists of batches and PyDataset-like sequences,
a DataLoader's drop_last, and validation_data given as a generator, a Dataset or a
DataLoader."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("the Keras oracle runs on the torch backend", allow_module_level=True)

import bigtrain  # noqa: E402
from bigtrain.models import Model  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(90, 4))
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)
W = [RNG.normal(0, 0.3, (4, 8)).astype(np.float32), np.zeros(8, np.float32),
     RNG.normal(0, 0.3, (8, 3)).astype(np.float32), np.zeros(3, np.float32)]
FIT = dict(epochs=2, batch_size=16, shuffle=False, verbose=0)


def _build(lib, two_inputs=False):
    if lib is keras:
        layers, make = keras.layers, keras.Model
    else:
        import bigtrain.layers as layers
        bigtrain.clear_session()
        make = Model
    if two_inputs:
        a, b = layers.Input(shape=(3,), name="a"), layers.Input(shape=(1,), name="b")
        h, ins = layers.Concatenate()([a, b]), [a, b]
    else:
        h = ins = layers.Input(shape=(4,))
    out = layers.Dense(3, activation="softmax")(layers.Dense(8, activation="relu")(h))
    model = make(ins, out)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.set_weights(W)
    return model


def _run(lib, x, y=None, two_inputs=False, **kw):
    model = _build(lib, two_inputs)
    history = model.fit(x, y, **{**FIT, **kw})
    return history.history, model.get_weights()


def _same(got, ref):
    (h1, w1), (h2, w2) = got, ref
    assert sorted(h1) == sorted(h2)
    for key in h1:
        np.testing.assert_allclose(h1[key], h2[key], atol=1e-5, err_msg=key)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int64", "bool", "uint8"])
def test_integer_inputs_are_cast_to_the_inputs_float32(dtype):
    xi = np.round(X * 2).clip(0, 3).astype(dtype)
    _same(_run(bigtrain, xi, Y), _run(keras, xi, Y))


def test_dict_keys_that_name_no_input_are_left_out():
    x = {"a": X[:, :3], "b": X[:, 3:], "unused": X}
    _same(_run(bigtrain, x, Y, two_inputs=True), _run(keras, x, Y, two_inputs=True))


class Batches:
    """A keras.utils.PyDataset-like sequence: __len__ and __getitem__, counted epoch ends."""

    def __init__(self):
        self.ends = 0

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return X[i * 16:(i + 1) * 16], Y[i * 16:(i + 1) * 16]

    def on_epoch_end(self):
        self.ends += 1


def test_lists_of_batches_and_batch_sequences_train_like_keras_arrays():
    ref = _run(keras, X, Y)
    _same(_run(bigtrain, [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 90, 16)]), ref)
    sequence = Batches()
    _same(_run(bigtrain, sequence), ref)
    assert sequence.ends == 2


def test_a_loaders_drop_last_as_keras():
    def loader():
        return DataLoader(TensorDataset(torch.tensor(X, dtype=torch.float32),
                                        torch.tensor(Y)), batch_size=16, drop_last=True)
    _same(_run(bigtrain, loader(), batch_size=None), _run(keras, loader(), batch_size=None))


def test_validation_data_as_generator_dataset_or_loader():
    xv, yv = X[:40], Y[:40]
    ref = _run(keras, X, Y, validation_data=(xv, yv))

    def cycle():
        while True:
            for i in range(0, 40, 16):
                yield xv[i:i + 16], yv[i:i + 16]
    _same(_run(bigtrain, X, Y, validation_data=cycle(), validation_steps=3), ref)
    dataset = TensorDataset(torch.tensor(xv, dtype=torch.float32), torch.tensor(yv))
    _same(_run(bigtrain, X, Y, validation_data=dataset), ref)
    _same(_run(bigtrain, X, Y, validation_data=DataLoader(dataset, batch_size=16)), ref)
