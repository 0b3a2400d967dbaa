"""compile(weighted_metrics=...) against Keras 3 fitting the same model (weights copied) on
the same data: each sample counts with its weight from fit's and evaluate's sample_weight
(and fit's class_weight), the History names them as Keras does ("weighted_<metric>" where
an unweighted metric took the name), and two ranks give the numbers of one process."""
import os

import numpy as np
import pytest

import bigtrain.metrics as bm
import bigtrain.optimizers as bopt

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from tests.api.test_lossmetric_metrics import _pair, _two_outputs  # noqa: E402

RNG = np.random.default_rng(11)
N = 48
X = RNG.normal(size=(N, 5)).astype("float32")
Y_BIN = (X[:, :1] + RNG.normal(scale=1.0, size=(N, 1)) > 0).astype("float32")
IDS = RNG.integers(0, 6, N)
Y_REG = RNG.normal(size=(N, 2)).astype("float32")
SW = RNG.uniform(0.0, 3.0, N).astype("float32")
FIT = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)
TOL = dict(rtol=1e-6, atol=1e-6)


def _same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key], dtype="float64"),
                                   np.asarray(want[key], dtype="float64"), **TOL, err_msg=key)


def _flat(values) -> list[float]:
    """evaluate's list with the values of a metric of several thresholds in line."""
    return [float(v) for value in values for v in np.ravel(np.asarray(value, "float64"))]


def _compiled(units, activation, loss, metrics, weighted):
    """A Keras model and its bigtrain twin, compiled alike; the metric lists are made by
    the callables after clear_session, so Keras names its objects alike in both."""
    keras.backend.clear_session()
    ours = (metrics(bm), weighted(bm))
    keras.backend.clear_session()
    theirs = (metrics(keras.metrics), weighted(keras.metrics))
    kmodel, model = _pair(units, activation)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=theirs[0],
                   weighted_metrics=theirs[1])
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss=loss, metrics=ours[0],
                  weighted_metrics=ours[1])
    return kmodel, model


def _binary_metrics(m):
    return ["accuracy", m.Precision()]


def _binary_weighted(m):
    # named: Keras would number a second Precision() "precision_1" by itself
    return ["accuracy", m.Precision(name="precision"), m.Recall(thresholds=[0.3, 0.6]),
            m.AUC(name="auc"),
            "binary_crossentropy", m.F1Score(average="micro", threshold=0.5)]


def test_fit_and_evaluate_weigh_samples_and_name_metrics_as_keras():
    kmodel, model = _compiled(1, "sigmoid", "binary_crossentropy", _binary_metrics,
                              _binary_weighted)
    val = (X[:20], Y_BIN[:20], SW[:20][::-1].copy())
    got = model.fit(X, Y_BIN, sample_weight=SW, validation_data=val, **FIT).history
    want = kmodel.fit(X, Y_BIN, sample_weight=SW, validation_data=val, **FIT).history
    assert "weighted_accuracy" in want and "weighted_precision" in want
    _same(got, want)
    # the weights change the numbers: a weighted metric is not its unweighted twin
    assert abs(got["weighted_accuracy"][-1] - got["accuracy"][-1]) > 1e-3
    _same(model.evaluate(X, Y_BIN, sample_weight=SW, return_dict=True),
          kmodel.evaluate(X, Y_BIN, sample_weight=SW, return_dict=True, verbose=0))
    # the list in Keras's order (its compiled names first, a name found twice listed
    # twice, then the "weighted_" ones sorted)
    np.testing.assert_allclose(_flat(model.evaluate(X, Y_BIN, sample_weight=SW)),
                               _flat(kmodel.evaluate(X, Y_BIN, sample_weight=SW, verbose=0)),
                               **TOL)
    # without sample weights a weighted metric counts every sample once, as Keras's
    _same(model.evaluate(X, Y_BIN, return_dict=True),
          kmodel.evaluate(X, Y_BIN, return_dict=True, verbose=0))
    _same(model.test_on_batch(X[:16], Y_BIN[:16], sample_weight=SW[:16], return_dict=True),
          kmodel.test_on_batch(X[:16], Y_BIN[:16], sample_weight=SW[:16], return_dict=True))


def test_class_weight_reaches_the_weighted_metrics_as_in_keras():
    def weighted(m):
        return ["accuracy", m.SparseTopKCategoricalAccuracy(k=2),
                "sparse_categorical_crossentropy", m.F1Score(average="macro")]
    kmodel, model = _compiled(6, "softmax", "sparse_categorical_crossentropy",
                              lambda m: ["accuracy"], lambda m: weighted(m)[:3])
    weights = {0: 0.2, 1: 3.0, 2: 1.0, 3: 0.5, 4: 2.0}  # class 5: 1.0
    _same(model.fit(X, IDS, class_weight=weights, validation_data=(X[:20], IDS[:20]),
                    **FIT).history,
          kmodel.fit(X, IDS, class_weight=weights, validation_data=(X[:20], IDS[:20]),
                     **FIT).history)


def test_regression_metrics_weigh_per_sample_means():
    kmodel, model = _compiled(2, None, "mse", lambda m: ["mae"],
                              lambda m: ["mae", m.RootMeanSquaredError(), "mape", "mse"])
    _same(model.fit(X, Y_REG, sample_weight=SW, **FIT).history,
          kmodel.fit(X, Y_REG, sample_weight=SW, **FIT).history)


def test_several_outputs_read_their_own_weights_and_keras_names():
    kmodel, model = _two_outputs()
    metrics = {"cls": ["accuracy"], "reg": ["mae"]}
    weighted = {"cls": ["accuracy", "sparse_top_k_categorical_accuracy"], "reg": ["mae", "mse"]}
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"],
                  metrics=metrics, weighted_metrics=weighted)
    sw = [SW, SW[::-1].copy()]  # one array per output, as Keras takes them for a list y
    got = model.fit(X, [IDS, Y_REG], sample_weight=sw, **FIT).history
    want = kmodel.fit(X, [IDS, Y_REG], sample_weight=sw, **FIT).history
    assert "cls_weighted_accuracy" in want and "reg_weighted_mae" in want
    _same(got, want)
    _same(model.evaluate(X, [IDS, Y_REG], sample_weight=sw, return_dict=True),
          kmodel.evaluate(X, [IDS, Y_REG], sample_weight=sw, return_dict=True, verbose=0))
    np.testing.assert_allclose(model.evaluate(X, [IDS, Y_REG], sample_weight=sw),
                               kmodel.evaluate(X, [IDS, Y_REG], sample_weight=sw, verbose=0),
                               **TOL)


class _Unweighted(bm.Metric):
    name = "mine"

    def update(self, y_true, y_pred):
        self._add(y_pred.sum(), y_pred.numel())


def test_a_metric_without_sample_weight_is_refused_as_weighted_at_compile():
    _, model = _pair(1, "sigmoid")
    with pytest.raises(ValueError, match="weighted_metrics got _Unweighted, whose update"):
        model.compile(optimizer="sgd", loss="binary_crossentropy",
                      weighted_metrics=[_Unweighted()])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=[_Unweighted()])


def _ranked_model():
    import bigtrain
    bigtrain.clear_session()
    _, model = _pair(1, "sigmoid")
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss="binary_crossentropy",
                  metrics=["accuracy"], weighted_metrics=_binary_weighted(bm))
    return model


def test_two_ranks_weigh_the_metrics_as_one_process():
    fit = dict(batch_size=8, epochs=1, shuffle=False, verbose=0)
    data = (X[:32], Y_BIN[:32])
    val = (*data, SW[:32][::-1].copy())
    want = _ranked_model().fit(*data, sample_weight=SW[:32], validation_data=val,
                               **fit).history
    got = _ranked_model().fit(*data, sample_weight=SW[:32], validation_data=val,
                              strategy="ddp", devices=2, timeout=60, **fit).history
    _same(got, want)


def test_a_masked_sequence_output_weighs_its_kept_steps_as_keras():
    # per-step weights of the steps an Embedding(mask_zero=True) leaves in (Keras's loss
    # takes no (B,) weights of a masked sequence output)
    from tests.api.test_masking import ANY, _sequence_classifier, _two_models
    kmodel, model = _two_models(_sequence_classifier)
    ids, y = ANY.astype("int64"), np.random.default_rng(0).integers(0, 3, (4, 6))
    sw = np.random.default_rng(1).uniform(0.0, 3.0, (4, 6)).astype("float32")
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"],
                  weighted_metrics=["accuracy", "sparse_categorical_crossentropy"])
    fit = dict(batch_size=4, epochs=1, shuffle=False, verbose=0)
    _same(model.fit(ids, y, sample_weight=sw, **fit).history,
          kmodel.fit(ids, y, sample_weight=sw, **fit).history)
    _same(model.evaluate(ids, y, sample_weight=sw, return_dict=True),
          kmodel.evaluate(ids, y, sample_weight=sw, return_dict=True, verbose=0))
