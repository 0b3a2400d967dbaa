"""Keras's fit/compile arguments: unknown keywords are refused with the closest name, and
class_weight, dict loss_weights and steps_per_epoch give Keras's own weights after training
(Keras 3 on its torch backend is the oracle); validation_freq/_steps/_batch_size act."""
import keras
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bigtrain import optimizers as bo
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

TOL = 1e-5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 4)).astype("float32")
Y = RNG.integers(0, 3, size=(16,))
CLASS_WEIGHT = {0: 1.0, 1: 3.0, 2: 0.25}


def _pair(outputs=("cls",)):
    """The same small network in Keras and bigtrain, bigtrain holding Keras's weights.
    Outputs: "cls" (3-way softmax) and optionally "score" (one linear unit)."""
    keras.utils.set_random_seed(0)  # the same start in every pair (guards compare pairs)
    heads = {"cls": dict(units=3, activation="softmax"), "score": dict(units=1)}
    ki = keras.Input((4,))
    kh = keras.layers.Dense(5, activation="relu", name="hidden")(ki)
    kout = {n: keras.layers.Dense(**heads[n], name=n)(kh) for n in outputs}
    km = keras.Model(ki, kout if len(outputs) > 1 else kout[outputs[0]])
    bi = Input(shape=(4,))
    bh = Dense(5, activation="relu", name="hidden")(bi)
    bout = [Dense(**heads[n], name=n)(bh) for n in outputs]
    bm = Model(inputs=bi, outputs=bout if len(outputs) > 1 else bout[0])
    bm.set_weights(_keras_weights_in_order(km, bm))
    return km, bm


def _keras_weights_in_order(km, bm) -> list:
    by_name = {layer.name: layer.get_weights() for layer in km.layers}
    return [w for layer in bm.layers for w in by_name.get(layer.name, [])]


def _diff(km, bm) -> float:
    return max(float(np.abs(a - b).max())
               for a, b in zip(_keras_weights_in_order(km, bm), bm.get_weights()))


def _sgd_step(km, bm, x, y, loss, **fit_kw):
    """Both models: compile with plain SGD, one full-batch step (or as fit_kw says)."""
    km.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    bm.compile(optimizer=bo.SGD(0.5), loss=loss)
    fit_kw.setdefault("batch_size", len(X))
    km.fit(x, y, shuffle=False, verbose=0, **fit_kw)
    bm.fit(x, y, shuffle=False, verbose=0, **fit_kw)


def test_unknown_fit_keyword_names_the_closest():
    _, bm = _pair()
    bm.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match=r"'foo'"):
        bm.fit(X, Y, foo=1, verbose=0)
    with pytest.raises(TypeError, match=r"'class_weights'.*did you mean 'class_weight'"):
        bm.fit(X, Y, class_weights={0: 1.0}, verbose=0)
    with pytest.raises(TypeError, match=r"did you mean 'validation_freq'"):
        bm.fit(X, Y, validation_frequency=2, verbose=0)
    with pytest.raises(TypeError, match=r"did you mean 'checkpoint_dir'"):
        bm.fit(X, Y, checkpoint_directory="ckpt", verbose=0)


def test_unknown_keyword_refused_before_ranks_start():
    _, bm = _pair()
    bm.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match=r"'sample_weights'.*did you mean 'sample_weight'"):
        bm.fit(X, Y, strategy="ddp", devices=2, sample_weights=np.ones(16), verbose=0)


def test_class_weight_matches_keras():
    km, bm = _pair()
    loss = "sparse_categorical_crossentropy"
    _sgd_step(km, bm, X, Y, loss, class_weight=CLASS_WEIGHT)
    assert _diff(km, bm) <= TOL
    km2, bm2 = _pair()  # the check can tell class weights from none
    _sgd_step(km2, bm2, X, Y, loss)
    assert _diff(km, bm2) > 100 * TOL


def test_class_weight_one_hot_labels_and_refusals():
    km, bm = _pair()
    onehot = np.eye(3, dtype="float32")[Y]
    _sgd_step(km, bm, X, onehot, "categorical_crossentropy", class_weight=CLASS_WEIGHT)
    assert _diff(km, bm) <= TOL
    with pytest.raises(ValueError, match="class_weight needs arrays"):
        bm.fit(TensorDataset(torch.tensor(X), torch.tensor(onehot)), class_weight=CLASS_WEIGHT,
               verbose=0)
    with pytest.raises(ValueError, match="both class_weight and sample_weight"):
        bm.fit(X, onehot, class_weight=CLASS_WEIGHT, sample_weight=np.ones(16), verbose=0)


def test_dict_loss_weights_match_keras():
    km, bm = _pair(("score", "cls"))
    ys = {"score": RNG.normal(size=(16, 1)).astype("float32"), "cls": Y}
    loss = {"score": "mse", "cls": "sparse_categorical_crossentropy"}
    km.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss,
               loss_weights={"score": 0.3, "cls": 2.0})
    bm.compile(optimizer=bo.SGD(0.5), loss=loss, loss_weights={"score": 0.3, "cls": 2.0})
    km.fit(X, ys, batch_size=16, shuffle=False, verbose=0)
    bm.fit(X, [ys["score"], ys["cls"]], batch_size=16, shuffle=False, verbose=0)
    assert _diff(km, bm) <= TOL
    with pytest.raises(ValueError, match="not outputs of this model"):
        bm.compile(optimizer="sgd", loss=loss, loss_weights={"scor": 1.0})


def test_steps_per_epoch_walks_one_pass_as_keras():
    km, bm = _pair()
    loss = "sparse_categorical_crossentropy"
    # 16 samples in batches of 4 = 4 batches; epochs of 3 steps: 3, then 1 (the pass ends),
    # then 3 of a new pass
    _sgd_step(km, bm, X, Y, loss, batch_size=4, steps_per_epoch=3, epochs=3)
    assert _diff(km, bm) <= TOL
    km2, bm2 = _pair()
    _sgd_step(km2, bm2, X, Y, loss, batch_size=4, epochs=1)
    assert _diff(km, bm2) > 100 * TOL


def test_validation_freq_steps_and_batch_size():
    _, bm = _pair()
    bm.compile(optimizer=bo.SGD(0.0), loss="sparse_categorical_crossentropy")
    vx, vy = X[:10], Y[:10]
    hist = bm.fit(X, Y, epochs=4, batch_size=8, validation_data=(vx, vy), validation_freq=2,
                  verbose=0)
    assert len(hist.history["loss"]) == 4 and len(hist.history["val_loss"]) == 2
    hist = bm.fit(X, Y, epochs=3, validation_data=(vx, vy), validation_freq=[1, 3], verbose=0)
    assert len(hist.history["val_loss"]) == 2
    # lr 0: the weights never move, so val_loss is the loss of the first steps*batch samples
    hist = bm.fit(X, Y, batch_size=8, validation_data=(vx, vy), validation_steps=1,
                  validation_batch_size=3, verbose=0)
    assert abs(hist.history["val_loss"][0] - bm.evaluate(vx[:3], vy[:3])) <= 1e-6
    assert abs(hist.history["val_loss"][0] - bm.evaluate(vx[:8], vy[:8])) > 1e-4
    # class_weight weighs the training samples only, as Keras: validation_split's share keeps
    # its plain loss
    hist = bm.fit(X, Y, validation_split=0.25, class_weight=CLASS_WEIGHT, verbose=0)
    assert abs(hist.history["val_loss"][0] - bm.evaluate(X[12:], Y[12:])) <= 1e-6
    with pytest.raises(ValueError, match="validation_freq"):
        bm.fit(X, Y, validation_data=(vx, vy), validation_freq=0, verbose=0)


def test_steps_per_epoch_resumes_mid_epoch_as_uninterrupted(tmp_path):
    """60 samples in batches of 10 = 6 batches per pass; epochs of 4 steps take windows
    [0, 4), [4, 6), [0, 4) of passes 0, 0, 1. A run stopped inside the third epoch resumes
    on the same window of the same pass."""
    from tests.engine.test_checkpoint import (Interrupt, StopAt, data, make_model, same,
                                              weights)
    fit = dict(epochs=3, batch_size=10, steps_per_epoch=4, verbose=0)
    whole = make_model()
    whole.fit(*data(), **fit)
    folder = str(tmp_path / "ckpt")
    with pytest.raises(Interrupt):
        make_model().fit(*data(), **fit, checkpoint_dir=folder, checkpoint_every=1,
                         callbacks=[StopAt(2, 2)])
    resumed = make_model(seed=1)
    resumed.fit(*data(), **fit, checkpoint_dir=folder)
    assert same(weights(resumed), weights(whole))
    assert not same(weights(whole), weights(make_model()))
    with pytest.raises(ValueError, match="use_ema"):
        model = make_model()
        model.compile(optimizer=bo.SGD(use_ema=True), loss="categorical_crossentropy")
        model.fit(*data(), **fit, checkpoint_dir=str(tmp_path / "ema"))
