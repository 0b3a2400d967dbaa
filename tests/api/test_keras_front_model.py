"""The model's front held to Keras 3: what model(x) returns after compile, a from_logits loss
on an activated output, the leaky_relu slope, validation_split's rows, and count_params /
summary with non-trainable weights."""
import warnings

import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain.callbacks import Callback
from bigtrain.losses import SparseCategoricalCrossentropy
from bigtrain.models import Model


def _pair(activation="softmax", features=5, units=3, seed=0):
    import keras
    keras.utils.set_random_seed(seed)
    kin = keras.Input((features,))
    kmodel = keras.Model(kin, keras.layers.Dense(units, activation=activation)(kin))
    bin_ = B.Input((features,))
    model = Model(bin_, B.Dense(units, activation=activation)(bin_))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


# ---- model(x) after compile --------------------------------------------------------------
@pytest.mark.parametrize("activation,loss", [("softmax", "sparse_categorical_crossentropy"),
                                             ("softmax", "categorical_crossentropy"),
                                             ("sigmoid", "binary_crossentropy")])
def test_calling_the_model_after_compile_returns_what_keras_returns(activation, loss):
    kmodel, model = _pair(activation)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    kmodel.compile(loss=loss)
    model.compile(loss=loss)
    want = np.asarray(kmodel(x).detach().cpu())
    np.testing.assert_allclose(model(torch.tensor(x)).detach().numpy(), want, atol=1e-6)
    np.testing.assert_allclose(model.predict(x), want, atol=1e-6)
    y = np.array([0, 1, 2, 1]) if loss.startswith("sparse") else \
        np.eye(3, dtype="float32")[[0, 1, 2, 1]] if loss.startswith("categorical") else \
        np.array([[0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 0]], "float32")
    model.fit(x, y, epochs=1, verbose=0)
    model.evaluate(x, y)
    # still probabilities after fit and evaluate (which read logits inside their steps)
    np.testing.assert_allclose(model(torch.tensor(x)).detach().numpy(), model.predict(x),
                               atol=1e-6)


def test_the_fused_loss_still_reads_logits_inside_fit():
    # probabilities that round to exactly 0 would give an infinite loss without the deferral
    inp = B.Input((2,))
    model = Model(inp, B.Dense(2, activation="softmax")(inp))
    model.set_weights([np.array([[60.0, -60.0], [0.0, 0.0]], "float32"), np.zeros(2, "float32")])
    model.compile(optimizer="sgd", learning_rate=0.0, loss="sparse_categorical_crossentropy")
    x = np.array([[2.0, 0.0]], "float32")
    assert model.predict(x)[0, 1] == 0.0
    assert model.evaluate(x, np.array([1])) == pytest.approx(240.0, rel=1e-5)


def test_model_called_in_a_callback_during_fit_returns_probabilities():
    seen = []

    class CallModel(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model(torch.zeros(2, 5)).detach().numpy())
            seen.append(self.model.predict(np.zeros((2, 5), "float32")))

    _, model = _pair()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 5), "float32"), np.array([0, 1, 2, 0]), epochs=1, verbose=0,
              callbacks=[CallModel()])
    for out in seen:
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-6)


# ---- from_logits=True on an activated output ----------------------------------------------
def test_a_from_logits_loss_on_a_softmax_output_keeps_the_softmax_and_warns():
    import keras
    kmodel, model = _pair(features=6, units=4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, 16)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.5),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(UserWarning, match="from_logits=True.*softmax"):
        model.compile(optimizer="sgd", learning_rate=0.5,
                      loss=SparseCategoricalCrossentropy(from_logits=True))
    assert model.evaluate(x, y) == pytest.approx(kmodel.evaluate(x, y, verbose=0), abs=1e-5)
    kh = kmodel.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0).history["loss"]
    bh = model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(bh, kh, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.predict(x), kmodel.predict(x, verbose=0), atol=1e-5)


def test_a_loss_by_name_on_a_softmax_output_compiles_without_a_warning():
    _, model = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")


# ---- leaky_relu ---------------------------------------------------------------------------
def test_leaky_relu_activation_uses_keras_slope():
    import keras
    from bigtrain.api.activations import get_activation
    x = torch.linspace(-3, 3, 13)
    want = np.asarray(keras.activations.get("leaky_relu")(x.numpy()))
    np.testing.assert_allclose(get_activation("leaky_relu")[1](x).numpy(), want, atol=1e-6)
    kmodel, model = _pair("leaky_relu")
    xs = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    np.testing.assert_allclose(model.predict(xs), kmodel.predict(xs, verbose=0), atol=1e-6)


# ---- validation_split ---------------------------------------------------------------------
@pytest.mark.parametrize("n,split", [(10, 0.25), (10, 0.3), (30, 0.15), (7, 0.5), (20, 0.1)])
def test_validation_split_keeps_the_training_rows_keras_keeps(n, split):
    import keras
    from bigtrain.engine.data import ArrayData
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split
    (ktrain, _), _ = train_validation_split((x, y), validation_split=split)
    train, val = ArrayData([torch.tensor(x)], [torch.tensor(y)]).split(split)
    assert len(train) == len(ktrain) and len(train) + len(val) == n
    kmodel, model = _pair(activation=None, features=3, units=1)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.compile(optimizer="sgd", learning_rate=0.0, loss="mse")
    kw = dict(validation_split=split, epochs=1, batch_size=100, shuffle=False, verbose=0)
    kh, bh = kmodel.fit(x, y, **kw).history, model.fit(x, y, **kw).history
    assert bh["val_loss"][0] == pytest.approx(kh["val_loss"][0], abs=1e-5)
    assert bh["loss"][0] == pytest.approx(kh["loss"][0], abs=1e-5)


# ---- count_params / summary ---------------------------------------------------------------
def _bn_pair():
    import keras
    kin = keras.Input((8,))
    kmodel = keras.Model(kin, keras.layers.Dense(3)(keras.layers.BatchNormalization()(kin)))
    bin_ = B.Input((8,))
    model = Model(bin_, B.Dense(3)(B.BatchNormalization()(bin_)))
    return kmodel, model


def test_count_params_counts_non_trainable_weights_as_keras():
    kmodel, model = _bn_pair()
    assert model.count_params() == kmodel.count_params() == 59
    assert model.count_params() == sum(w.size for w in model.get_weights())
    text = model.summary(print_fn=None)
    assert "Total params: 59 " in text
    assert "Trainable params: 43 " in text
    assert "Non-trainable params: 16 " in text
    row = [line for line in text.splitlines() if "(BatchNormalization)" in line][0]
    assert row.split()[-1] == str(kmodel.layers[1].count_params())  # 32


def test_frozen_parameters_count_as_non_trainable():
    import keras
    kin = keras.Input((8,))
    dense = keras.layers.Dense(2)
    dense.trainable = False
    kmodel = keras.Model(kin, dense(kin))
    bin_ = B.Input((8,))
    layer = B.Dense(2)
    model = Model(bin_, layer(bin_))
    for p in layer.parameters():
        p.requires_grad_(False)
    assert model.count_params() == kmodel.count_params() == 18
    text = model.summary(print_fn=None)
    assert "Trainable params: 0 " in text and "Non-trainable params: 18 " in text


def test_count_params_of_a_torch_module_leaves_out_the_batch_counter():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model = Model(net)
    # Linear 15 + BatchNorm gamma, beta 6 + running mean, variance 6; not num_batches_tracked
    assert model.count_params() == 27 == sum(w.size for w in model.get_weights())


# ---- several outputs: each output's loss ----------------------------------------------------
def test_each_outputs_loss_is_in_the_history_and_evaluate_as_in_keras():
    """fit's History and evaluate gave only the total loss: Keras also gives
    "<output>_loss" (evaluate: [loss, cls_loss, reg_loss, metrics...])."""
    import keras
    rng = np.random.default_rng(0)
    x, ya = rng.normal(size=(20, 5)).astype("float32"), rng.integers(0, 3, 20)
    yb = rng.normal(size=(20, 2)).astype("float32")

    def build(L, ModelCls, seed=0):
        inp = L.Input((5,))
        h = L.Dense(7, activation="relu")(inp)
        return ModelCls(inp, [L.Dense(3, activation="softmax", name="cls")(h),
                              L.Dense(2, name="reg")(h)])
    keras.utils.set_random_seed(0)
    kmodel, model = build(keras.layers, keras.Model), build(B, Model)
    model.set_weights(kmodel.get_weights())
    args = dict(loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                loss_weights={"cls": 0.5, "reg": 2.0},
                metrics={"cls": ["accuracy"], "reg": ["mae"]})
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), **args)
    model.compile(optimizer="sgd", learning_rate=0.1, **args)
    fit = dict(epochs=2, batch_size=8, shuffle=False, verbose=0, validation_split=0.2)
    want = kmodel.fit(x, {"cls": ya, "reg": yb}, **fit).history
    got = model.fit(x, {"cls": ya, "reg": yb}, **fit).history
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(model.evaluate(x, [ya, yb]),
                               kmodel.evaluate(x, [ya, yb], verbose=0), rtol=1e-5)
