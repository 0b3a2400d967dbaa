"""Hugging Face datasets with missing values, and TextCorpus windows, as a user meets them:
a null in an input or label column (numpy format reads it as NaN, an integer label then as
-2**63, which trained on NaN or failed inside the loss) is refused before training with the
column named, for a datasets.Dataset (also after select) and a streaming IterableDataset;
windows cut the text exactly as a hand-made numpy loop does, keeping the last whole window,
and refuse a negative max_windows (which dropped windows from the end)."""
import datasets
import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_iris

import bigtrain
from bigtrain.data import TextCorpus, kjv_text
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

X, Y = load_iris(return_X_y=True)


def _model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _table(a=None, label=None):
    return pa.table({"a": pa.array(X[:, 0] if a is None else a), "b": X[:, 1], "c": X[:, 2],
                     "d": X[:, 3], "label": pa.array(Y if label is None else label, pa.int64())})


def test_nulls_in_a_hugging_face_dataset_are_refused_before_training():
    labels = [*Y[:149], None]
    inputs = [None, *X[1:, 0]]
    for table, column in ((_table(label=labels), "label"), (_table(a=inputs), "a")):
        for ds in (datasets.Dataset(table), datasets.Dataset(table).to_iterable_dataset()):
            with pytest.raises(ValueError, match=rf"column '{column}' of the Hugging Face "
                                                 rf"dataset has 1 null.*r\['{column}'\]"):
                _model().fit(ds, batch_size=32, epochs=1, shuffle=False, verbose=0)
    # rows selected without the null train, and exactly as the same arrays do
    kept = datasets.Dataset(_table(label=labels)).select(range(149))
    model = _model()
    model.fit(kept, batch_size=32, epochs=1, shuffle=False, verbose=0)
    reference = _model()
    reference.fit(X[:149].astype(np.float32), Y[:149], batch_size=32, epochs=1, shuffle=False,
                  verbose=0)
    assert all(np.array_equal(p, q) for p, q in zip(model.get_weights(),
                                                    reference.get_weights()))


def test_windows_cut_the_text_as_a_numpy_loop_does():
    text = kjv_text().train[:5000]  # bytes of the real corpus
    corpus = TextCorpus(train=text, val=text[:100])
    for block, stride in ((64, None), (64, 7), (99, 100), (4999, 1)):
        step = block if stride is None else stride
        starts = range(0, len(text) - block, step)  # a window needs block + 1 tokens
        want_x = np.stack([text[s:s + block] for s in starts])
        want_y = np.stack([text[s + 1:s + block + 1] for s in starts])
        x, y = corpus.windows("train", block, stride)
        assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
        assert y[-1, -1] == text[starts[-1] + block]  # the last window kept when whole
    x, _ = corpus.windows("train", 64, max_windows=3)
    assert len(x) == 3
    for bad in (dict(max_windows=-1), dict(stride=0), dict(block_size=3.5)):
        with pytest.raises(ValueError, match="must be (a )?whole number"):
            corpus.windows("train", **{"block_size": 64, **bad})
