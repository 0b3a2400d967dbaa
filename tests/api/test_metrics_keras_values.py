"""Each Keras metric class bigtrain reads, against Keras 3 itself: the same y_true and y_pred
fed in batches of uneven sizes through bigtrain's update / result and Keras's update_state /
result, both as the bigtrain class and as the Keras object read by `bigtrain.metrics.get`."""
import os

import numpy as np
import pytest
import torch

import bigtrain.metrics as bm

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
KM = keras.metrics
RNG = np.random.default_rng(5)
N = 60
SPLITS = [7, 20, 33]  # batch boundaries: batches of 7, 13, 13 and 27
BIN_TRUE = RNG.integers(0, 2, (N, 1)).astype("float32")
BIN_PROB = RNG.uniform(size=(N, 1)).astype("float32")
LOGITS = RNG.normal(scale=2.0, size=(N, 1)).astype("float32")
MULTI_TRUE = RNG.integers(0, 2, (N, 4)).astype("float32")  # multi-label targets
MULTI_PROB = RNG.uniform(size=(N, 4)).astype("float32")
IDS = RNG.integers(0, 5, N)
ONEHOT = np.eye(5, dtype="float32")[IDS]
CLS_LOGITS = RNG.normal(scale=2.0, size=(N, 5)).astype("float32")
SOFTMAX = (np.exp(CLS_LOGITS) / np.exp(CLS_LOGITS).sum(-1, keepdims=True)).astype("float32")
REG_TRUE = RNG.normal(size=(N, 3)).astype("float32")
REG_PRED = (REG_TRUE + RNG.normal(scale=0.5, size=(N, 3))).astype("float32")

DATA = {"binary": (BIN_TRUE, BIN_PROB), "logits": (BIN_TRUE, LOGITS),
        "multi": (MULTI_TRUE, MULTI_PROB), "onehot": (ONEHOT, SOFTMAX),
        "onehot_logits": (ONEHOT, CLS_LOGITS), "ids": (IDS, SOFTMAX),
        "ids_logits": (IDS, CLS_LOGITS), "reg": (REG_TRUE, REG_PRED)}

# (Keras class name, constructor arguments, data)
CASES = [
    ("Precision", {}, "binary"),
    ("Precision", {"thresholds": 0.3}, "binary"),
    ("Precision", {"thresholds": [0.2, 0.5, 0.8]}, "binary"),
    ("Precision", {"top_k": 2}, "multi"),
    ("Precision", {"top_k": 2, "class_id": 1}, "multi"),
    ("Recall", {}, "binary"),
    ("Recall", {"thresholds": [0.1, 0.6]}, "binary"),
    ("Recall", {"class_id": 2}, "multi"),
    ("Recall", {"top_k": 1}, "onehot"),
    ("F1Score", {}, "onehot"),
    ("F1Score", {"average": "micro", "threshold": 0.5}, "multi"),
    ("F1Score", {"average": "macro", "threshold": 0.4}, "multi"),
    ("F1Score", {"average": "weighted"}, "onehot"),
    ("FBetaScore", {"beta": 2.0, "average": None, "threshold": 0.5}, "multi"),
    ("FBetaScore", {"beta": 0.5, "average": "macro"}, "onehot"),
    ("BinaryAccuracy", {}, "binary"),
    ("BinaryAccuracy", {"threshold": 0.7}, "multi"),
    ("CategoricalAccuracy", {}, "onehot"),
    ("SparseCategoricalAccuracy", {}, "ids"),
    ("SparseTopKCategoricalAccuracy", {"k": 3}, "ids"),
    ("TopKCategoricalAccuracy", {"k": 2}, "onehot"),
    ("MeanSquaredError", {}, "reg"),
    ("RootMeanSquaredError", {}, "reg"),
    ("MeanAbsoluteError", {}, "reg"),
    ("MeanAbsolutePercentageError", {}, "reg"),
    ("BinaryCrossentropy", {}, "binary"),
    ("BinaryCrossentropy", {"from_logits": True, "label_smoothing": 0.1}, "logits"),
    ("BinaryCrossentropy", {}, "multi"),
    ("CategoricalCrossentropy", {"label_smoothing": 0.1}, "onehot"),
    ("CategoricalCrossentropy", {"from_logits": True}, "onehot_logits"),
    ("SparseCategoricalCrossentropy", {}, "ids"),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, "ids_logits"),
    ("AUC", {}, "binary"),
    ("AUC", {"num_thresholds": 50, "curve": "PR"}, "binary"),
    ("AUC", {"curve": "PR"}, "multi"),
    ("AUC", {"curve": "PR", "summation_method": "minoring"}, "binary"),
    ("AUC", {"summation_method": "majoring", "num_thresholds": 20}, "multi"),
    ("AUC", {"from_logits": True}, "logits"),
]


def _keras_value(metric, y_true, y_pred):
    for t, p in zip(np.split(y_true, SPLITS), np.split(y_pred, SPLITS)):
        metric.update_state(t, p)
    return np.asarray(metric.result(), dtype="float64")


def _bigtrain_value(metric, y_true, y_pred):
    metric.reset("cpu")
    for t, p in zip(np.split(y_true, SPLITS), np.split(y_pred, SPLITS)):
        metric.update(torch.as_tensor(t), torch.as_tensor(p))
    return np.asarray(metric.result(), dtype="float64")


@pytest.mark.parametrize("cls,kwargs,data", CASES,
                         ids=[f"{c}-{d}-{k}" for c, k, d in CASES])
def test_a_metric_reads_what_keras_reads(cls, kwargs, data):
    y_true, y_pred = DATA[data]
    want = _keras_value(getattr(KM, cls)(**kwargs), y_true, y_pred)
    ours = getattr(bm, cls)(**kwargs)
    read = bm.get(getattr(KM, cls)(**kwargs))  # the Keras object, read through its config
    assert type(read) is type(ours)
    for metric in (ours, read):
        got = _bigtrain_value(metric, y_true, y_pred)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_the_sums_of_two_halves_give_the_whole():
    """Ranks add their states: the result of summed states is the metric over both."""
    for metric in (bm.Precision(), bm.RootMeanSquaredError(), bm.F1Score(average="macro")):
        data = DATA["reg" if isinstance(metric, bm.RootMeanSquaredError) else "onehot"]
        if isinstance(metric, bm.Precision):
            data = DATA["binary"]
        states = []
        for half in (slice(0, 25), slice(25, N)):
            _bigtrain_value(metric, data[0][half], data[1][half])
            states.append(metric.state.clone())
        whole = _bigtrain_value(metric, *data)
        np.testing.assert_allclose(metric.result(states[0] + states[1]), whole, rtol=1e-12)


def test_names_keras_reads_give_its_history_keys():
    for name, cls in [("precision", bm.Precision), ("recall", bm.Recall),
                      ("root_mean_squared_error", bm.RootMeanSquaredError),
                      ("mape", bm.MeanAbsolutePercentageError), ("f1_score", bm.F1Score),
                      ("Precision", bm.Precision), ("BCE", bm.BinaryCrossentropy)]:
        keras_metric = KM.get(name)  # each name is one Keras reads
        assert keras_metric is not None
        metric = bm.get(name)
        assert type(metric) is cls and metric.name == name
    # Keras's compile reads "accuracy" in any case and logs it as given
    assert type(bm.get("ACC")) is bm.Accuracy and bm.get("ACC").name == "ACC"
    with pytest.raises(ValueError, match="unknown metric 'rmse'.*root_mean_squared_error"):
        bm.get("rmse")  # not a Keras name either
    with pytest.raises(ValueError):
        KM.get("rmse")


def test_a_keras_metric_with_no_counterpart_names_those_that_exist():
    with pytest.raises(ValueError, match=r"keras.metrics.MeanIoU has no bigtrain counterpart"
                                         r".*F1Score\(\).*Precision\(\).*Recall\(\)"):
        bm.get(KM.MeanIoU(num_classes=3))
    with pytest.raises(ValueError, match="multi_label"):
        bm.get(KM.AUC(multi_label=True))
