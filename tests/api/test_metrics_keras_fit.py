"""Keras metric objects and names in compile, against Keras 3 fitting the same model (weights
copied) on the same data: History keys and values, evaluate(), and Precision / Recall on two
ranks against one process."""
import os

import numpy as np
import pytest

import bigtrain.layers as B
import bigtrain.metrics as bm
import bigtrain.optimizers as bopt
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from tests.api.test_lossmetric_metrics import _pair  # noqa: E402  (a Keras and a bigtrain twin)

RNG = np.random.default_rng(3)
N = 48
X = RNG.normal(size=(N, 5)).astype("float32")
Y_BIN = (X[:, :1] + RNG.normal(scale=1.0, size=(N, 1)) > 0).astype("float32")
IDS = RNG.integers(0, 4, N)
ONEHOT = np.eye(4, dtype="float32")[IDS]
Y_REG = RNG.normal(size=(N, 2)).astype("float32")
FIT = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)


def _same(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key], dtype="float64"),
                                   np.asarray(want[key], dtype="float64"),
                                   rtol=1e-5, atol=1e-6, err_msg=key)


def _compare(units, activation, loss, y, keras_metrics, our_metrics):
    """Fit and evaluate in Keras and bigtrain; the metric lists are made by the callables
    after clear_session, so Keras names its objects alike in both ("precision", not
    "precision_1")."""
    keras.backend.clear_session()
    ours = our_metrics()
    keras.backend.clear_session()
    theirs = keras_metrics()
    kmodel, model = _pair(units, activation)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=theirs)
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss=loss, metrics=ours)
    fit = dict(FIT, validation_data=(X[:20], y[:20]))
    _same(model.fit(X, y, **fit).history, kmodel.fit(X, y, **fit).history)
    _same(model.evaluate(X, y, return_dict=True), kmodel.evaluate(X, y, return_dict=True,
                                                                  verbose=0))


def _binary_metrics(m=keras.metrics):
    return ["accuracy", m.Precision(), m.Recall(), m.AUC(curve="PR", name="pr_auc")]


@pytest.mark.parametrize("ours", [
    _binary_metrics,  # Keras's own objects, read by bigtrain
    lambda: _binary_metrics(bm),
    lambda: ["accuracy", "precision", "recall", bm.AUC(curve="PR", name="pr_auc")],
], ids=["keras-objects", "bigtrain-objects", "names"])
def test_precision_and_recall_in_fit_as_keras(ours):
    _compare(1, "sigmoid", "binary_crossentropy", Y_BIN, _binary_metrics, ours)


def _named(m):
    return [m.Precision(thresholds=0.6, name="p60"), m.BinaryAccuracy(threshold=0.7),
            m.BinaryCrossentropy(label_smoothing=0.1, name="smooth_bce")]


@pytest.mark.parametrize("module", ["keras", "bigtrain"])
def test_metric_objects_keep_their_arguments_and_names(module):
    m = keras.metrics if module == "keras" else bm
    _compare(1, "sigmoid", "binary_crossentropy", Y_BIN, lambda: _named(keras.metrics),
             lambda: _named(m))


def _one_hot_metrics(m):
    return [m.F1Score(average="macro"), m.F1Score(name="f1_each"), m.CategoricalAccuracy(),
            m.CategoricalCrossentropy(), m.Recall(top_k=1, name="top1_recall")]


def _sparse_metrics(m):
    return [m.SparseTopKCategoricalAccuracy(k=2), m.SparseCategoricalAccuracy(),
            m.SparseCategoricalCrossentropy(name="xent")]


@pytest.mark.parametrize("module", ["keras", "bigtrain"])
def test_classification_metrics_read_probabilities_of_a_deferred_softmax(module):
    # the loss takes the softmax into itself: the metrics still read probabilities
    m = keras.metrics if module == "keras" else bm
    _compare(4, "softmax", "categorical_crossentropy", ONEHOT,
             lambda: _one_hot_metrics(keras.metrics), lambda: _one_hot_metrics(m))
    _compare(4, "softmax", "sparse_categorical_crossentropy", IDS,
             lambda: _sparse_metrics(keras.metrics), lambda: _sparse_metrics(m))


def test_regression_metrics_by_name_and_object():
    def names():
        return ["root_mean_squared_error", "mape", "mae", "MSE"]
    _compare(2, None, "mse", Y_REG, names, names)
    def rmse():
        return [keras.metrics.RootMeanSquaredError(name="rmse")]
    _compare(2, None, "mse", Y_REG, rmse, rmse)


def _binary_model():
    import bigtrain
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = B.Input((5,))
    model = Model(inp, B.Dense(1, activation="sigmoid")(inp))
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss="binary_crossentropy",
                  metrics=["precision", keras.metrics.Recall(thresholds=0.4, name="recall"),
                           bm.F1Score(average="micro", threshold=0.5)])
    return model


def test_precision_and_recall_on_two_ranks_equal_one_process():
    fit = dict(batch_size=8, epochs=1, shuffle=False, verbose=0)
    data = (X[:32], Y_BIN[:32])
    want = _binary_model().fit(*data, **fit, validation_data=data).history
    got = _binary_model().fit(*data, **fit, validation_data=data, strategy="ddp", devices=2,
                              timeout=60).history
    _same(got, want)
    assert 0 < want["precision"][0] < 1 and 0 < want["val_recall"][0] < 1
