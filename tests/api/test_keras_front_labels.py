"""Label dtypes and the metrics that read them, held to Keras 3: integer class ids of any
width, integer-typed one-hot rows, and one-hot labels that fit stores compactly as ids."""
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain.api.metrics import Accuracy, TopKCategoricalAccuracy, get_metric
from bigtrain.models import Model


def _softmax_pair(features=6, classes=4, seed=0):
    """A one-Dense softmax classifier in Keras and in bigtrain, with the same weights."""
    import keras
    keras.utils.set_random_seed(seed)
    kin = keras.Input((features,))
    kmodel = keras.Model(kin, keras.layers.Dense(classes, activation="softmax")(kin))
    bin_ = B.Input((features,))
    model = Model(bin_, B.Dense(classes, activation="softmax")(bin_))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _fit_both(loss, y, metrics, x, classes=4):
    import keras
    kmodel, model = _softmax_pair(x.shape[1], classes)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=metrics)
    model.compile(optimizer="sgd", learning_rate=0.1, loss=loss, metrics=metrics)
    kh = kmodel.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    bh = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    return kh, bh, kmodel, model


def _assert_history_close(kh, bh):
    assert sorted(kh) == sorted(bh)
    for key in kh:
        np.testing.assert_allclose(bh[key], kh[key], rtol=0, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "int16"])
def test_sparse_crossentropy_takes_narrow_integer_ids_on_a_softmax_output(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = rng.integers(0, 4, 24).astype(dtype)
    kh, bh, kmodel, model = _fit_both("sparse_categorical_crossentropy", y, ["accuracy"], x)
    _assert_history_close(kh, bh)
    np.testing.assert_allclose(model.evaluate(x, y), kmodel.evaluate(x, y, verbose=0),
                               rtol=0, atol=1e-5)
    # torch int32 tensors take the same fused path
    history = model.fit(torch.tensor(x), torch.tensor(y.astype("int32")), batch_size=8,
                        epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize("dtype", ["int64", "int32"])
@pytest.mark.parametrize("activation", ["softmax", "tanh"])
def test_categorical_crossentropy_takes_integer_typed_one_hot_rows(dtype, activation):
    import keras
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = np.eye(7, dtype=dtype)[rng.integers(0, 7, 24)]
    keras.utils.set_random_seed(0)
    kin = keras.Input((6,))
    kmodel = keras.Model(kin, keras.layers.Dense(7, activation=activation)(kin))
    bin_ = B.Input((6,))
    model = Model(bin_, B.Dense(7, activation=activation)(bin_))
    model.set_weights(kmodel.get_weights())
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy",
                   metrics=["accuracy"])
    model.compile(optimizer="sgd", learning_rate=0.1, loss="categorical_crossentropy",
                  metrics=["accuracy"])
    kh = kmodel.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    bh = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    _assert_history_close(kh, bh)


def test_categorical_crossentropy_loss_function_reads_integer_one_hot_as_one_hot():
    from bigtrain.losses import categorical_crossentropy
    y_pred = torch.softmax(torch.randn(5, 3), -1)
    ids = torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(ids, 3)  # int64, the prediction's shape
    want = categorical_crossentropy(one_hot.float(), y_pred)
    torch.testing.assert_close(categorical_crossentropy(one_hot, y_pred), want)
    torch.testing.assert_close(categorical_crossentropy(one_hot.int(), y_pred), want)
    torch.testing.assert_close(categorical_crossentropy(ids, y_pred), want)  # compact ids


@pytest.mark.parametrize("metrics", [["categorical_accuracy", "accuracy"],
                                     ["top_k_categorical_accuracy", "binary_accuracy", "mae"]])
def test_metrics_read_one_hot_labels_as_keras_does(metrics):
    # softmax + categorical_crossentropy + exactly one-hot float labels: fit stores the labels
    # as class ids; every metric must still read them as the one-hot rows they were
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = np.eye(7, dtype="float32")[rng.integers(0, 7, 24)]  # 7 > top-k's k=5
    kh, bh, kmodel, model = _fit_both("categorical_crossentropy", y, metrics, x, classes=7)
    _assert_history_close(kh, bh)
    got = model.evaluate(x, y, return_dict=True)
    want = kmodel.evaluate(x, y, verbose=0, return_dict=True)
    for key in want:
        assert abs(got[key] - want[key]) < 1e-5, (key, got, want)


def test_categorical_accuracy_equals_the_accuracy_of_predict():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 24)]
    _, model = _softmax_pair()
    model.compile(optimizer="sgd", loss="categorical_crossentropy",
                  metrics=["categorical_accuracy"])
    truth = float((model.predict(x).argmax(1) == y.argmax(1)).mean())
    assert model.evaluate(x, y)[1] == pytest.approx(truth, abs=1e-9)


def test_one_hot_metrics_take_class_ids_and_one_hot_rows_alike():
    y_pred = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    ids = torch.tensor([1, 1, 2, 2])
    one_hot = torch.nn.functional.one_hot(ids, 3).float()
    for make in (lambda: Accuracy("categorical"), lambda: TopKCategoricalAccuracy(k=2),
                 lambda: get_metric("binary_accuracy")):
        results = []
        for y_true in (one_hot, ids):
            m = make()
            m.reset("cpu")
            m.update(y_true, y_pred)
            results.append(m.result())
        assert results[0] == results[1], (make(), results)
    m = Accuracy("categorical")
    m.reset("cpu")
    m.update(ids, y_pred)
    assert m.result() == 0.5


def test_a_users_metric_object_sees_the_one_hot_labels_as_given():
    from bigtrain.metrics import Metric

    class SeenShapes(Metric):
        name = "seen"
        shapes: list = []

        def update(self, y_true, y_pred):
            SeenShapes.shapes.append(tuple(y_true.shape))
            self._add(torch.zeros((), dtype=torch.float64), 1)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
    inp = B.Input((6,))
    model = Model(inp, B.Dense(4, activation="softmax")(inp))
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[SeenShapes()])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert SeenShapes.shapes and all(s == (8, 4) for s in SeenShapes.shapes)


@pytest.mark.parametrize("metrics,loss,labels", [
    (["mean_absolute_error", "mse", "mae", "mean_squared_error"], "mse", "regression"),
    (["acc", "accuracy", "sparse_categorical_accuracy"], "sparse_categorical_crossentropy",
     "ids"),
])
def test_history_keys_are_the_metric_names_given_as_keras_logs_them(metrics, loss, labels):
    import keras
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32") if labels == "regression" else \
        rng.integers(0, 2, 16)
    activation = None if labels == "regression" else "softmax"
    keras.utils.set_random_seed(0)
    kin = keras.Input((3,))
    kmodel = keras.Model(kin, keras.layers.Dense(2, activation=activation)(kin))
    bin_ = B.Input((3,))
    model = Model(bin_, B.Dense(2, activation=activation)(bin_))
    model.set_weights(kmodel.get_weights())
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=metrics)
    model.compile(optimizer="sgd", learning_rate=0.1, loss=loss, metrics=metrics)
    kh = kmodel.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                    validation_split=0.25).history
    bh = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                   validation_split=0.25).history
    _assert_history_close(kh, bh)  # same keys, and "mean_squared_error" still squares
