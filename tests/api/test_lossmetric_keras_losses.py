"""Keras loss objects and bigtrain's loss classes held to Keras 3 on one process: every
argument, sample_weight and class_weight, Keras's reductions, and the refusals."""
import os

import cloudpickle
import numpy as np
import pytest
import torch

import bigtrain.layers as B
import bigtrain.losses as bl
import bigtrain.optimizers as bopt
from bigtrain.api.losses import get_loss
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
KL = keras.losses
RNG = np.random.default_rng(3)
N, D, C = 48, 6, 3
X = RNG.normal(size=(N, D)).astype("float32")
IDS = RNG.integers(0, C, N)
TARGETS = {"sparse": IDS, "onehot": np.eye(C, dtype="float32")[IDS],
           "binary": RNG.integers(0, 2, (N, C)).astype("float32"),
           "reg": RNG.normal(size=(N, C)).astype("float32")}
SW = RNG.uniform(0.2, 2.0, N).astype("float32")


def _pair(activation):
    keras.utils.set_random_seed(0)
    ki = keras.Input((D,))
    kmodel = keras.Model(ki, keras.layers.Dense(C, activation=activation)(
        keras.layers.Dense(8, activation="relu")(ki)))
    bi = B.Input((D,))
    model = Model(bi, B.Dense(C, activation=activation)(B.Dense(8, activation="relu")(bi)))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


CASES = {  # loss object, output activation, targets
    "scce": (lambda: KL.SparseCategoricalCrossentropy(), "softmax", "sparse"),
    "scce_logits_ignore": (lambda: KL.SparseCategoricalCrossentropy(from_logits=True,
                                                                    ignore_class=1), None, "sparse"),
    "cce_smoothing": (lambda: KL.CategoricalCrossentropy(label_smoothing=0.1), "softmax", "onehot"),
    "bce_smoothing": (lambda: KL.BinaryCrossentropy(label_smoothing=0.2), "sigmoid", "binary"),
    "huber": (lambda: KL.Huber(delta=0.3), None, "reg"),
    "cosine": (lambda: KL.CosineSimilarity(axis=-1), None, "reg"),
    "mse_sum": (lambda: KL.MeanSquaredError(reduction="sum"), None, "reg"),
    "mae_mean_with_weight": (lambda: KL.MeanAbsoluteError(reduction="mean_with_sample_weight"),
                             None, "reg"),
    "kld": (lambda: KL.KLDivergence(), "softmax", "onehot"),  # Keras's own function
    "focal": (lambda: KL.BinaryFocalCrossentropy(gamma=3.0, alpha=0.3,
                                                 apply_class_balancing=True), "sigmoid", "binary"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_keras_loss_object_trains_as_keras_with_sample_weights(case):
    make, activation, kind = CASES[case]
    y = TARGETS[kind]
    kmodel, model = _pair(activation)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.05), loss=make())
    model.compile(optimizer=bopt.SGD(learning_rate=0.05), loss=make())
    for weights in (None, SW):
        np.testing.assert_allclose(model.evaluate(X, y, sample_weight=weights),
                                   kmodel.evaluate(X, y, sample_weight=weights, verbose=0),
                                   rtol=1e-5, atol=1e-6)
    fit = dict(batch_size=16, epochs=2, shuffle=False, verbose=0, sample_weight=SW)
    want = kmodel.fit(X, y, **fit).history["loss"]
    np.testing.assert_allclose(model.fit(X, y, **fit).history["loss"], want, rtol=1e-5)
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("labels", ["sparse", "onehot"])
def test_class_weight_reaches_a_keras_loss_object(labels):
    kmodel, model = _pair("softmax")
    make = KL.SparseCategoricalCrossentropy if labels == "sparse" else \
        lambda: KL.CategoricalCrossentropy(label_smoothing=0.1)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss=make())
    model.compile(optimizer=bopt.SGD(learning_rate=0.1), loss=make())
    fit = dict(batch_size=16, epochs=1, shuffle=False, verbose=0,
               class_weight={0: 0.2, 1: 3.0, 2: 1.0})
    want = kmodel.fit(X, TARGETS[labels], **fit).history["loss"]
    np.testing.assert_allclose(model.fit(X, TARGETS[labels], **fit).history["loss"], want,
                               rtol=1e-5)
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _call(spec, y, p, w=None):
    return float(spec(torch.tensor(y), torch.tensor(p), None if w is None else torch.tensor(w)))


def test_bigtrain_loss_classes_take_keras_arguments():
    logits = RNG.normal(size=(N, C)).astype("float32")
    probs = torch.tensor(logits).softmax(-1).numpy()
    pairs = [
        (bl.CategoricalCrossentropy(label_smoothing=0.1), KL.CategoricalCrossentropy(label_smoothing=0.1), "onehot", probs),
        (bl.BinaryCrossentropy(from_logits=True, label_smoothing=0.1),
         KL.BinaryCrossentropy(from_logits=True, label_smoothing=0.1), "binary", logits),
        (bl.SparseCategoricalCrossentropy(ignore_class=0), KL.SparseCategoricalCrossentropy(ignore_class=0), "sparse", probs),
        (bl.MeanSquaredError(reduction="sum"), KL.MeanSquaredError(reduction="sum"), "reg", logits),
        (bl.Huber(delta=0.4), KL.Huber(delta=0.4), "reg", logits),
        (bl.CategoricalCrossentropy(axis=-1, name="cce"), KL.CategoricalCrossentropy(axis=-1), "onehot", probs),
    ]
    for ours, theirs, kind, pred in pairs:
        for w in (None, SW):
            assert _call(ours, TARGETS[kind], pred, w) == pytest.approx(
                float(theirs(TARGETS[kind], pred, sample_weight=w)), rel=1e-5)
    with pytest.raises(TypeError, match="MeanSquaredError.*'delta'.*it takes"):
        bl.MeanSquaredError(delta=1.0)
    with pytest.raises(ValueError, match=r"SparseCategoricalCrossentropy\(reduction=None\)"):
        bl.SparseCategoricalCrossentropy(reduction=None)


def test_keras_loss_arguments_survive_pickling():
    # the ranks get the task pickled; Keras's get_config drops delta and both axes
    y3, p3 = RNG.normal(size=(4, C, 5)).astype("float32"), RNG.normal(size=(4, C, 5)).astype("float32")
    ids3 = RNG.integers(0, C, (4, 5))
    probs3 = torch.tensor(p3).softmax(1).numpy()
    for obj, y, p in [(KL.Huber(delta=0.1), TARGETS["reg"], RNG.normal(size=(N, C)).astype("float32")),
                      (KL.CosineSimilarity(axis=1), y3, p3),
                      (KL.SparseCategoricalCrossentropy(axis=1), ids3, probs3)]:
        spec = cloudpickle.loads(cloudpickle.dumps(get_loss(obj)))
        assert _call(spec, y, p) == pytest.approx(float(obj(y, p)), rel=1e-5)


def _mean_loss(y_true, y_pred):
    return ((y_true - y_pred) ** 2).mean()


def test_a_loss_of_one_number_with_sample_weights_is_refused():
    _, model = _pair(None)
    model.compile(optimizer="sgd", loss=_mean_loss)
    model.fit(X, TARGETS["reg"], epochs=1, verbose=0)  # no weights: read as the batch mean
    with pytest.raises(ValueError, match="_mean_loss returned one number.*one loss per sample"):
        model.evaluate(X, TARGETS["reg"], sample_weight=SW)
    with pytest.raises(ValueError, match="sample_weight or class_weight"):
        model.fit(X, TARGETS["reg"], sample_weight=SW, epochs=1, verbose=0)


def test_a_keras_loss_without_reduction_is_refused():
    _, model = _pair(None)
    with pytest.raises(ValueError, match=r"MeanSquaredError\(reduction=None\)"):
        model.compile(optimizer="sgd", loss=KL.MeanSquaredError(reduction=None))
    with pytest.raises(ValueError, match=r"LogCosh\(reduction='none'\)"):
        model.compile(optimizer="sgd", loss=KL.LogCosh(reduction="none"))
