"""Weighted metrics of a masked sequence output under each loss reduction, held to Keras 3:
Keras's loss scales the batch's weights by B*T / (steps kept) before its metrics read them
under reduction "sum_over_batch_size" only; under "sum" and "mean_with_sample_weight" the
metrics read the weights as given."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from tests.api.test_backlog_weighted_metrics import _same  # noqa: E402
from tests.api.test_masking import _two_models  # noqa: E402
from tests.api.test_small_masked_weights import FIT, IDS, SW, _regressor  # noqa: E402


@pytest.mark.parametrize("reduction", ["sum", "mean_with_sample_weight",
                                       "sum_over_batch_size"])
def test_masked_weighted_mae_follows_the_loss_reduction_as_keras(reduction):
    kmodel, model = _two_models(_regressor)
    y = np.random.default_rng(0).normal(size=(12, 6, 2)).astype("float32")
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError(reduction=reduction),
                  weighted_metrics=["mae"])
    _same(model.evaluate(IDS, y, sample_weight=SW, batch_size=5, return_dict=True),
          kmodel.evaluate(IDS, y, sample_weight=SW, batch_size=5, return_dict=True,
                          verbose=0))
    _same(model.fit(IDS, y, sample_weight=SW, **FIT).history,
          kmodel.fit(IDS, y, sample_weight=SW, **FIT).history)
