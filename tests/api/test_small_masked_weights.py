"""Weighted metrics of a masked sequence output held to Keras 3: Keras's loss scales each
batch's per-step weights by B*T / (steps kept) before its metrics read them, so over
batches that keep different numbers of steps the metrics weigh each batch by it; weights
of shape (B, T, 1) weigh as (B, T)."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from tests.api.test_backlog_weighted_metrics import _same  # noqa: E402
from tests.api.test_masking import ANY, _two_models  # noqa: E402

# 12 sequences whose batches of 5 keep different numbers of steps (one keeps none)
IDS = np.concatenate([ANY, ANY[::-1], ANY[:, ::-1]]).astype("int64")
SW = np.random.default_rng(1).uniform(0.0, 3.0, (12, 6)).astype("float32")
FIT = dict(batch_size=5, epochs=2, shuffle=False, verbose=0)


def _regressor(L):
    return [L.Embedding(5, 3, mask_zero=True), L.LSTM(4, return_sequences=True), L.Dense(2)]


def _classifier(L):
    return [L.Embedding(5, 3, mask_zero=True), L.GRU(4, return_sequences=True),
            L.Dense(1, activation="sigmoid")]


@pytest.mark.parametrize("weights", ["per_step", "per_step_1"])
def test_weighted_mae_of_uneven_masked_batches_as_keras(weights):
    kmodel, model = _two_models(_regressor)
    y = np.random.default_rng(0).normal(size=(12, 6, 2)).astype("float32")
    sw = SW if weights == "per_step" else SW[..., None]  # (B, T) or (B, T, 1)
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss="mse", weighted_metrics=["mae"])
    _same(model.fit(IDS, y, sample_weight=sw, **FIT).history,
          kmodel.fit(IDS, y, sample_weight=sw, **FIT).history)
    _same(model.evaluate(IDS, y, sample_weight=sw, batch_size=3, return_dict=True),
          kmodel.evaluate(IDS, y, sample_weight=sw, batch_size=3, return_dict=True,
                          verbose=0))


def test_weighted_ratio_metrics_of_uneven_masked_batches_as_keras():
    """Precision and accuracy read the same scaled weights (the batches' factors do not
    cancel in a ratio summed over batches)."""
    kmodel, model = _two_models(_classifier)
    y = np.random.default_rng(2).integers(0, 2, (12, 6, 1)).astype("float32")
    for m, lib in ((kmodel, keras.metrics), (model, __import__("bigtrain.metrics").metrics)):
        m.compile(optimizer="sgd", loss="binary_crossentropy",
                  weighted_metrics=["accuracy", lib.Precision(name="precision")])
    _same(model.evaluate(IDS, y, sample_weight=SW, batch_size=5, return_dict=True),
          kmodel.evaluate(IDS, y, sample_weight=SW, batch_size=5, return_dict=True,
                          verbose=0))
