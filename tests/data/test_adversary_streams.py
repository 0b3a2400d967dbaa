"""Streams that end too soon or are not what fit expects: an empty generator or
IterableDataset, an IterableDataset that can be read only once (empty on its second pass),
a re-iterable of batches without len() (tf.data-like), batches of text, and sample_weight=
given beside a Dataset, DataLoader or stream (Keras refuses it; leaving it out trained
unweighted)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

RNG = np.random.default_rng(4)
X = RNG.normal(size=(40, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)
W = RNG.uniform(0.1, 2.0, size=40).astype(np.float32)


def _model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(2, activation="softmax")(Dense(8, activation="relu")(inp)))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", learning_rate=0.1)
    return model


def _fit(x, y=None, **kw):
    model = _model()
    history = model.fit(x, y, **{"epochs": 2, "batch_size": 16, "shuffle": False,
                                 "verbose": 0, **kw})
    return model.get_weights(), history.history


def _diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a[0], b[0]))


class Samples(IterableDataset):
    def __init__(self, n=len(X)):
        self.n = n

    def __iter__(self):
        return ((X[i], Y[i]) for i in range(self.n))


class Once(IterableDataset):
    """Its __iter__ hands out one iterator: the second pass finds it spent."""

    def __init__(self):
        self.it = iter([(X[i], Y[i]) for i in range(len(X))])

    def __iter__(self):
        return self.it


class Batches:
    """tf.data-like: re-iterable batches, no len(), no __getitem__."""

    def __iter__(self):
        return ((X[i:i + 16], Y[i:i + 16]) for i in range(0, len(X), 16))


def test_a_stream_that_gives_nothing_stops_with_a_clear_error():
    with pytest.raises(ValueError, match="gave no batches for epoch 1"):
        _fit(iter([]), epochs=1)
    with pytest.raises(ValueError, match="gave no batches for epoch 1"):
        _fit(Samples(0), epochs=1)
    with pytest.raises(ValueError, match="epoch 2 .*pass 2 .*__iter__ start again"):
        _fit(Once(), epochs=2)


def test_a_reiterable_of_batches_trains_like_the_arrays_every_epoch():
    assert _diff(_fit(Batches(), batch_size=None), _fit(X, Y)) == 0.0
    assert _diff(_fit(Batches(), batch_size=None, epochs=3), _fit(X, Y, epochs=3)) == 0.0


@pytest.mark.parametrize("source", [
    lambda: TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)),
    lambda: DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=16),
    lambda: Samples(),
    lambda: iter([(X[i:i + 16], Y[i:i + 16]) for i in range(0, 40, 16)]),
    lambda: Batches(),
], ids=["dataset", "loader", "iterable", "generator", "reiterable"])
def test_sample_weight_beside_a_dataset_or_stream_is_refused(source):
    with pytest.raises(ValueError, match=r"sample_weight cannot be given with x as a .*\(x, y, "
                                         r"sample_weight\)"):
        _fit(source(), sample_weight=W, epochs=1)


def test_validation_weights_beside_a_dataset_are_refused():
    val = TensorDataset(torch.from_numpy(X[:10]), torch.from_numpy(Y[:10]))
    with pytest.raises(ValueError, match="sample_weight cannot be given with validation x"):
        _fit(X, Y, validation_data=(val, None, W[:10]), epochs=1)


def test_a_stream_of_text_is_refused_with_the_fix():
    words = np.array([["a", "b", "c", "d"]] * 16)
    with pytest.raises(TypeError, match=r"dtype <U1 \(text or objects\).*encode text first"):
        _fit(iter([(words, Y[:16])]), epochs=1)
