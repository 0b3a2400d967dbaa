import numpy as np
import pytest
import torch
from torch import nn

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from tests.api.conftest import seed_like_model, teacher_data


def test_seed_model_learns_and_history_has_keras_keys(data):
    x, y, _ = data
    bigtrain.set_seed(0)
    model = seed_like_model()
    hist = model.fit(x, y, epochs=8, batch_size=32, validation_split=0.2, verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert hist.epoch == list(range(8))
    assert hist.history["accuracy"][-1] > 0.9
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    loss, acc = model.evaluate(x, y)
    assert acc > 0.9 and loss < 0.4
    assert model.predict(x[:5]).shape == (5, 4)


def test_set_seed_makes_runs_repeatable(data):
    x, y, _ = data
    runs = []
    for _ in range(2):
        bigtrain.set_seed(3)
        model = seed_like_model()
        model.fit(x, y, epochs=1, batch_size=64, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_evaluate_returns_like_keras(data):
    x, y, _ = data
    inp = Input(shape=(20,))
    model = Model(inp, Dense(4, activation="softmax")(inp))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    assert isinstance(model.evaluate(x, y), float)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy", "auc"])
    out = model.evaluate(x, y)
    assert isinstance(out, list) and len(out) == 3
    assert set(model.evaluate(x, y, return_dict=True)) == {"loss", "accuracy", "auc"}


def test_softmax_moves_into_the_loss_and_predict_gives_probabilities(data):
    x, y, _ = data
    model = seed_like_model()
    probs = model(torch.from_numpy(x[:4]))  # as Keras: calling the model applies softmax,
    assert torch.allclose(probs.sum(-1), torch.ones(4))  # though the loss reads logits
    np.testing.assert_allclose(model.predict(x[:4]).sum(-1), 1.0, rtol=1e-5)


def test_any_torch_module_trains_with_sparse_labels(data):
    x, _, ids = data
    bigtrain.set_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    model = Model.from_module(net)
    model.compile(optimizer="adam", loss=nn.functional.cross_entropy, metrics=["accuracy"],
                  learning_rate=0.01)
    hist = model.fit(x, ids, epochs=5, batch_size=32, verbose=0)
    assert hist.history["accuracy"][-1] > 0.85
    assert Model(net).count_params() == 20 * 32 + 32 + 32 * 4 + 4


def test_multi_input_dict_and_sample_weight():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 3)).astype("float32"), rng.normal(size=(200, 2)).astype("float32")
    target = (a.sum(1, keepdims=True) - b[:, :1] > 0).astype("float32")
    ia, ib = Input(shape=(3,), name="a"), Input(shape=(2,), name="b")
    from bigtrain.layers import Concatenate
    out = Dense(1, activation="sigmoid")(Dense(8, activation="relu")(Concatenate()([ia, ib])))
    model = Model([ia, ib], out)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"],
                  learning_rate=0.01)
    hist = model.fit({"a": a, "b": b}, target, epochs=10, batch_size=20, verbose=0,
                     sample_weight=np.ones(200, dtype="float32"))
    assert hist.history["accuracy"][-1] > 0.9


def test_memmap_inputs_are_streamed(tmp_path):
    x, y, _ = teacher_data(n=300)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    bigtrain.set_seed(0)
    m1 = seed_like_model()
    m1.fit(xm, y, epochs=2, batch_size=50, verbose=0)
    bigtrain.set_seed(0)
    m2 = seed_like_model()
    m2.fit(x, y, epochs=2, batch_size=50, verbose=0)
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_summary_counts_the_seed_model():
    inp = Input(shape=(1000,))
    out = Dense(10, activation="softmax")(Dense(512, activation="relu")(inp))
    model = Model(inputs=inp, outputs=out)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    text = model.summary(print_fn=None)
    assert "Total params: 517,642" in text
    assert "(None, 512)" in text and "512,512" in text
    # parameters 4 B + gradients 4 B + Adam 8 B per parameter
    assert f"= {517_642 * 16 / 1024 / 1024:.2f} MB" in text


def test_terminate_on_nan_names_the_step(capsys):
    x, y, _ = teacher_data(n=256)
    model = seed_like_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy", learning_rate=1e12)
    hist = model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    out = capsys.readouterr().out
    assert "TerminateOnNaN" in out and "step" in out
    assert len(hist.epoch) < 3


def test_terminate_on_nan_names_the_first_bad_step_after_earlier_checks(capsys):
    # 100 steps: the loss is checked after step 50, after step 100 and at the epoch end;
    # the first NaN (step 57) is found by the second check and named exactly
    x, y, _ = teacher_data(n=3200)
    calls = []

    def loss(y_true, y_pred):
        calls.append(1)
        per = ((y_pred - y_true) ** 2).mean(-1)
        return per * float("nan") if len(calls) == 57 else per

    model = seed_like_model()
    model.compile(optimizer="sgd", loss=loss)
    hist = model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    out = capsys.readouterr().out
    assert "at epoch 1, step 57 " in out and "samples 1792..1823" in out
    assert hist.epoch == [0] and np.isnan(hist.history["loss"][0])  # Keras keeps the NaN epoch
