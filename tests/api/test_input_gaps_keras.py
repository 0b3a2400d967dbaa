"""Inputs of several kinds held to Keras 3: validation_split on dict inputs and targets,
predict on a list of arrays with a last partial batch, evaluate's names and order for
several outputs, class_weight with sparse and one-hot labels, sample_weight as a list per
output; and class_weight refused, clearly, for labels with a class per time step."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
import bigtrain.layers as B  # noqa: E402
from bigtrain.models import Model  # noqa: E402
from tests.api.test_backlog_weighted_metrics import _same  # noqa: E402

N = 13  # batches of 4 or 5 leave a partial last one
RNG = np.random.default_rng(0)
XA = RNG.normal(size=(N, 3)).astype("float32")
XB = RNG.normal(size=(N, 2)).astype("float32")
YR = RNG.normal(size=(N, 1)).astype("float32")
YC = RNG.integers(0, 3, N)
SW1, SW2 = RNG.uniform(0, 2, N).astype("float32"), RNG.uniform(0, 2, N).astype("float32")
CW = {0: 1.0, 1: 3.0, 2: 0.5}
FIT = dict(batch_size=4, epochs=2, shuffle=False, verbose=0)


def _pair(build):
    """(Keras model, bigtrain model with its weights) from one builder."""
    keras.utils.set_random_seed(0)
    kmodel, model = build(keras.layers, keras.Model), build(B, Model)
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _two_in_two_out(L, M):
    a, b = L.Input((3,), name="a"), L.Input((2,), name="b")
    h = L.Dense(4, activation="relu")(L.Concatenate()([a, b]))
    return M([a, b], [L.Dense(1, name="reg")(h),
                      L.Dense(3, activation="softmax", name="cls")(h)])


def _classifier(L, M):
    i = L.Input((3,))
    return M(i, L.Dense(3, activation="softmax")(L.Dense(4)(i)))


def _compiled_pair(build, *args, **kw):
    pair = _pair(build)
    for m in pair:
        m.compile("sgd", *args, **kw)
    return pair


def test_validation_split_of_dict_inputs_and_targets():
    kmodel, model = _compiled_pair(_two_in_two_out, ["mse", "sparse_categorical_crossentropy"],
                                   metrics=[[], ["accuracy"]])
    x, y = {"a": XA, "b": XB}, {"reg": YR, "cls": YC}
    _same(model.fit(x, y, validation_split=0.3, **FIT).history,
          kmodel.fit(x, y, validation_split=0.3, **FIT).history)


def test_predict_a_list_of_arrays_with_a_partial_last_batch():
    kmodel, model = _pair(_two_in_two_out)
    got, want = model.predict([XA, XB], batch_size=5), kmodel.predict([XA, XB], batch_size=5,
                                                                       verbose=0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)


def test_evaluate_names_and_order_of_several_outputs():
    kmodel, model = _compiled_pair(
        _two_in_two_out, {"reg": "mse", "cls": "sparse_categorical_crossentropy"},
        metrics={"reg": ["mae"], "cls": ["accuracy"]}, weighted_metrics={"cls": ["accuracy"]})
    x, y = [XA, XB], {"reg": YR, "cls": YC}
    _same(model.evaluate(x, y, batch_size=5, return_dict=True),
          kmodel.evaluate(x, y, batch_size=5, return_dict=True, verbose=0))
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=5),
                               kmodel.evaluate(x, y, batch_size=5, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("labels", ["sparse", "sparse_n1", "one_hot"])
def test_class_weight_with_sparse_and_one_hot_labels(labels):
    y = {"sparse": YC, "sparse_n1": YC.reshape(-1, 1),
         "one_hot": np.eye(3, dtype="float32")[YC]}[labels]
    loss = "categorical_crossentropy" if labels == "one_hot" else \
        "sparse_categorical_crossentropy"
    kmodel, model = _compiled_pair(_classifier, loss, metrics=["accuracy"],
                                   weighted_metrics=["accuracy"])
    _same(model.fit(XA, y, class_weight=CW, **FIT).history,
          kmodel.fit(XA, y, class_weight=CW, **FIT).history)


@pytest.mark.parametrize("second", ["weights", "none"])
def test_sample_weight_as_a_list_per_output(second):
    sw = [SW1, SW2 if second == "weights" else None]
    kmodel, model = _compiled_pair(_two_in_two_out, ["mse", "sparse_categorical_crossentropy"],
                                   weighted_metrics=[[], ["accuracy"]])
    _same(model.fit([XA, XB], [YR, YC], sample_weight=sw, **FIT).history,
          kmodel.fit([XA, XB], [YR, YC], sample_weight=sw, **FIT).history)


@pytest.mark.parametrize("labels", ["ids", "one_hot"])
def test_class_weight_refuses_a_class_per_time_step(labels):
    """Keras reads (n, T) ids' argmax (a step's index) and fails on (n, T, C) obscurely."""
    ids = RNG.integers(0, 3, (N, 4))
    y = ids if labels == "ids" else np.eye(3, dtype="float32")[ids]
    inp = B.Input((4, 3))
    model = Model(inp, B.Dense(3, activation="softmax")(inp))
    model.compile("sgd", "sparse_categorical_crossentropy" if labels == "ids" else
                  "categorical_crossentropy")
    with pytest.raises(ValueError, match=r"a class per time step.*sample_weight of shape "
                                         r"\(13, 4\)"):
        model.fit(RNG.normal(size=(N, 4, 3)).astype("float32"), y, class_weight=CW,
                  verbose=0)
