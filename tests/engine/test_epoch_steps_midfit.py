"""What callbacks change in the middle of an epoch reaches the fused steps of a plain
one-process fit as it reaches the general loop: module hooks registered and removed between
steps, a layer frozen mid-epoch, torch's global module hooks, a sparse embedding's
gradients, a checkpointed fit resumed in the middle of an epoch. The fused loop is chosen
once per epoch, so each of these must still give identical weights, History and batch logs.
"""
import warnings

import numpy as np
import pytest
import torch
from torch.nn.modules import module as torch_module

import bigtrain
from bigtrain.callbacks import Callback
from bigtrain.layers import Dense, Embedding, Flatten, Input
from bigtrain.models import Model

pytestmark = pytest.mark.filterwarnings("ignore")
RNG = np.random.default_rng(1)
X = RNG.normal(size=(203, 6)).astype("float32")  # 26 steps of 8
Y = np.eye(3, dtype="float32")[RNG.integers(0, 3, 203)]
IDS = RNG.integers(0, 50, size=(203, 4))


def _dense(optimizer="adam"):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    i = Input(shape=(6,))
    h = Dense(8, activation="relu", name="h")(i)
    m = Model(i, Dense(3, activation="softmax", name="out")(h))
    m.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    return m


def _sparse_embedding(optimizer):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    i = Input(shape=(4,), dtype="int64")
    h = Flatten()(Embedding(50, 5, sparse=True)(i))
    m = Model(i, Dense(3, activation="softmax", name="out")(Dense(8, activation="relu",
                                                                  name="h")(h)))
    m.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    return m


class _Between(Callback):
    """Keeps every batch's logs; `change(model, step)` runs before each step, `undo` (the
    handles it returned) before step 9."""
    wants_batch_logs = True

    def __init__(self, change):
        super().__init__()
        self.change, self.logs, self.handles = change, [], []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 3:
            self.handles = self.change(self.model) or []
        if batch == 9:
            for h in self.handles:
                h.remove()
            self.handles = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def _fit(build, x, general: bool, monkeypatch, change, **kw):
    """(weights, history, batch logs, warnings, loops chosen) of a fit, through the general
    loop when `general`."""
    from bigtrain.engine import epoch_steps
    taken, fused_ok = [], epoch_steps.fused_ok
    callback = _Between(change)
    with monkeypatch.context() as m, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.setattr(epoch_steps, "fused_ok",
                  lambda e: taken.append(fused_ok(e)) or (not general and taken[-1]))
        model = build()
        h = model.fit(x, Y, batch_size=8, epochs=2, verbose=0, callbacks=[callback], **kw)
    return (model.get_weights(), h.history, callback.logs,
            [str(w.message) for w in caught], taken)


def _same(build, monkeypatch, change, x=X, **kw):
    w1, h1, logs1, warned1, taken = _fit(build, x, False, monkeypatch, change, **kw)
    w2, h2, logs2, warned2, _ = _fit(build, x, True, monkeypatch, change, **kw)
    assert taken and all(taken)  # the condition chose the fused loop for every epoch
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2)) and len(w1) == len(w2)
    np.testing.assert_equal(h1, h2)
    np.testing.assert_equal(logs1, logs2)
    assert warned1 == warned2
    return w1, warned1


def _halve_output(model):
    return [model.get_layer("h").register_forward_hook(lambda m, a, o: o * 0.5)]


def _halve_input(model):
    return [model.get_layer("out").register_forward_pre_hook(lambda m, a: (a[0] * 0.5,))]


def _halve_linear_output(model):  # a hook on the torch module inside the Dense
    return [model.get_layer("h").linear.register_forward_hook(lambda m, a, o: o * 0.5)]


def _halve_gradient(model):  # the gradient "out" passes back to "h"
    return [model.get_layer("out").register_full_backward_hook(
        lambda m, gin, gout: tuple(None if g is None else g * 0.5 for g in gin))]


def _global_hook(model):
    return [torch_module.register_module_forward_hook(
        lambda m, a, o: o * 0.5 if isinstance(m, torch.nn.Linear) else o)]


def _freeze(model):
    model.get_layer("h").trainable = False


@pytest.mark.parametrize("change", [_halve_output, _halve_input, _halve_linear_output,
                                    _halve_gradient, _global_hook, _freeze])
def test_a_change_between_steps_trains_the_fused_loop_as_the_general_one(monkeypatch,
                                                                          change):
    weights, _ = _same(_dense, monkeypatch, change)
    unchanged, _, _, _, _ = _fit(_dense, X, False, monkeypatch, lambda model: None)
    assert not all(np.array_equal(a, b) for a, b in zip(weights, unchanged))  # it acted


@pytest.mark.parametrize("optimizer, warns", [("sgd", False), ("adam", True)])
def test_a_sparse_embedding_trains_fused_as_in_the_general_loop(monkeypatch, optimizer,
                                                                 warns):
    _, warned = _same(lambda: _sparse_embedding(optimizer), monkeypatch,
                      lambda model: None, x=IDS)
    assert sum("sparse" in w for w in warned) == (1 if warns else 0), warned


class _Interrupt(Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 7:
            raise KeyboardInterrupt("stopped mid-epoch")


def test_a_fit_resumed_mid_epoch_trains_fused_as_in_the_general_loop(monkeypatch, tmp_path):
    def resumed(general: bool):
        folder = tmp_path / ("general" if general else "fused")
        with pytest.raises(KeyboardInterrupt):
            _dense().fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[_Interrupt()],
                         checkpoint_dir=str(folder), checkpoint_every=3)
        # the checkpoint of step 33 (epoch 1, batch 6): the resumed epoch skips 7 steps
        return _fit(_dense, X, general, monkeypatch, lambda model: None,
                    checkpoint_dir=str(folder), checkpoint_every=3)
    w1, h1, logs1, _, taken = resumed(False)
    w2, h2, logs2, _, _ = resumed(True)
    assert taken == [True] and len(logs1) == 26 - 7
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
    np.testing.assert_equal(h1, h2)
    np.testing.assert_equal(logs1, logs2)
