"""Metric names and metric objects held to Keras 3: duplicate names, objects reused across
fits, outputs and models, per-output lists, name= and num_thresholds=, and the message for a
metric bigtrain does not read."""
import os

import numpy as np
import pytest
import torch

import bigtrain.layers as B
import bigtrain.metrics as bm
import bigtrain.optimizers as bopt
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
RNG = np.random.default_rng(11)
N = 40
X = RNG.normal(size=(N, 5)).astype("float32")
IDS = RNG.integers(0, 6, N)
ONEHOT = np.eye(6, dtype="float32")[IDS]
REG = RNG.normal(size=(N, 2)).astype("float32")
FIT = dict(batch_size=16, epochs=1, shuffle=False, verbose=0)


def _pair(units=6, activation="softmax"):
    keras.utils.set_random_seed(0)
    ki = keras.Input((5,))
    kmodel = keras.Model(ki, keras.layers.Dense(units, activation=activation)(ki))
    bi = B.Input((5,))
    model = Model(bi, B.Dense(units, activation=activation)(bi))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _two_outputs(seed=0):
    keras.utils.set_random_seed(seed)
    ki = keras.Input((5,), name="x")
    kmodel = keras.Model(ki, [keras.layers.Dense(6, activation="softmax", name="cls")(ki),
                              keras.layers.Dense(2, name="reg")(ki)])
    bi = B.Input((5,), name="x")
    model = Model(bi, [B.Dense(6, activation="softmax", name="cls")(bi),
                       B.Dense(2, name="reg")(bi)])
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _same_history(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("ours,theirs", [
    (["top_k_categorical_accuracy", lambda: bm.TopKCategoricalAccuracy(k=2)],
     ["top_k_categorical_accuracy", lambda: keras.metrics.TopKCategoricalAccuracy(k=2)]),
    (["accuracy", "accuracy", "accuracy"], ["accuracy", "accuracy", "accuracy"]),
])
def test_metrics_of_the_same_name_get_keras_suffixes(ours, theirs):
    kmodel, model = _pair()
    def build(ms):
        return [m() if callable(m) else m for m in ms]
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy",
                   metrics=build(theirs))
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss="categorical_crossentropy",
                  metrics=build(ours))
    fit = dict(FIT, validation_data=(X[:10], ONEHOT[:10]))
    _same_history(model.fit(X, ONEHOT, **fit).history, kmodel.fit(X, ONEHOT, **fit).history)
    want = kmodel.evaluate(X, ONEHOT, return_dict=True, verbose=0)
    got = model.evaluate(X, ONEHOT, return_dict=True)
    assert got == pytest.approx(want, rel=1e-5)
    # Keras's list: its compiled names first ("accuracy" found once per metric of that
    # name: its value three times), then the suffixed keys sorted
    np.testing.assert_allclose(model.evaluate(X, ONEHOT), kmodel.evaluate(X, ONEHOT, verbose=0),
                               rtol=1e-5)


def test_a_metric_object_is_never_changed_by_fit():
    _, model = _two_outputs()
    top2 = bm.TopKCategoricalAccuracy(k=2)
    model.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"],
                  metrics={"cls": [top2], "reg": ["mae"]})
    keys = [sorted(model.fit(X, [IDS, REG], **FIT).history) for _ in range(2)]
    assert keys[0] == keys[1] == ["cls_loss", "cls_top_k_categorical_accuracy", "loss",
                                  "reg_loss", "reg_mae"]
    assert "cls_top_k_categorical_accuracy" in model.evaluate(X, [IDS, REG], return_dict=True)
    assert top2.name == "top_k_categorical_accuracy"


def test_one_metric_object_for_every_output_counts_each_output_apart():
    results = []
    for metric in ("mae", bm.MeanError("mae")):
        _, model = _two_outputs()
        model.compile(optimizer=bopt.SGD(learning_rate=0.1),
                      loss=["sparse_categorical_crossentropy", "mse"], metrics=[metric])
        results.append(model.fit(X, [IDS, REG], **FIT).history)
    _same_history(results[1], results[0])  # cls_mae and reg_mae, each its own


def test_per_output_lists_of_metrics_as_keras():
    kmodel, model = _two_outputs()
    metrics = [["accuracy"], ["mae", "mse"]]
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1),
                   loss=["sparse_categorical_crossentropy", "mse"], metrics=metrics)
    model.compile(optimizer=bopt.SGD(learning_rate=0.1),
                  loss=["sparse_categorical_crossentropy", "mse"], metrics=metrics)
    _same_history(model.fit(X, [IDS, REG], **FIT).history,
                  kmodel.fit(X, [IDS, REG], **FIT).history)
    with pytest.raises(ValueError, match="list of 3 lists, for a model of 2 outputs"):
        model.compile(optimizer="sgd", loss="mse", metrics=[["mae"], ["mse"], ["mae"]])


def test_an_accuracy_object_reads_each_model_anew():
    acc = bm.Accuracy()
    binary = RNG.integers(0, 2, (N, 1)).astype("float32")
    _, first = _pair(units=1, activation="sigmoid")
    first.compile(optimizer="sgd", loss="binary_crossentropy", metrics=[acc])
    first.fit(X, binary, **FIT)
    _, second = _pair()
    second.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=[acc])
    probs = second.predict(X)
    truth = float((probs.argmax(-1) == IDS).mean())
    assert second.evaluate(X, IDS)[1] == pytest.approx(truth)
    # the object itself, used by hand: reset forgets the kind the last batches showed
    acc.reset("cpu")
    acc.update(torch.tensor(binary), torch.tensor(first.predict(X)))
    acc.reset("cpu")
    acc.update(torch.tensor(IDS), torch.tensor(probs))
    assert acc.result() == pytest.approx(truth)


def test_metric_classes_take_keras_names_and_thresholds():
    kmodel, model = _pair(units=1, activation="sigmoid")
    y = RNG.integers(0, 2, (N, 1)).astype("float32")
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy",
                   metrics=[keras.metrics.AUC(num_thresholds=50, name="auc50"),
                            keras.metrics.BinaryAccuracy(name="hits")])
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss="binary_crossentropy",
                  metrics=[bm.AUC(num_thresholds=50, name="auc50"), bm.Accuracy(name="hits")])
    _same_history(model.fit(X, y, **FIT).history, kmodel.fit(X, y, **FIT).history)


def test_a_metric_bigtrain_does_not_read_is_named_with_what_it_reads():
    _, model = _pair()
    with pytest.raises(ValueError, match=r"keras.metrics.Hinge has no bigtrain counterpart"
                                         r".*bigtrain.metrics object.*AUC\(\).*Precision\(\)"):
        model.compile(optimizer="sgd", loss="mse", metrics=[keras.metrics.Hinge()])
    with pytest.raises(ValueError, match="metric function.*Metric subclass"):
        model.compile(optimizer="sgd", loss="mse", metrics=[lambda y, p: p.mean()])
