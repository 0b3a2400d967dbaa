"""The fused steps of a plain one-process fit: the same weights and logs as the general
loop through the strategy's hooks, and no per-step call where nothing reads it (marks,
the step hooks, the feed's generator)."""
import collections
import sys

import numpy as np
import pytest
import torch
from torch import nn

import bigtrain
from bigtrain.callbacks import Callback
from bigtrain.layers import GRU, Dense, Embedding, Input
from bigtrain.models import Model

pytestmark = pytest.mark.filterwarnings("ignore")
RNG = np.random.default_rng(0)
X = RNG.normal(size=(203, 6)).astype("float32")  # 26 steps of 8: the ring fills, then 3 rows
Y = np.eye(3, dtype="float32")[RNG.integers(0, 3, 203)]


def _dense():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    i = Input(shape=(6,))
    m = Model(i, Dense(3, activation="softmax")(Dense(8, activation="relu")(i)))
    m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy", "mae"])
    return m


def _two_outputs():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    i = Input(shape=(6,))
    h = Dense(8, activation="relu")(i)
    m = Model(i, [Dense(3, activation="softmax")(h), Dense(1)(h)])
    m.compile(optimizer="adam", loss=["categorical_crossentropy", "mse"],
              metrics=[["accuracy"], ["mae"]])
    return m


def _masked():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    i = Input(shape=(5,))
    m = Model(i, Dense(3, activation="softmax")(
        GRU(4, return_sequences=True)(Embedding(20, 4, mask_zero=True)(i))))
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


class BatchLogs(Callback):
    """Keeps every batch's running logs; stops after `stop_at` batches of the first epoch."""
    wants_batch_logs = True

    def __init__(self, stop_at=None):
        super().__init__()
        self.logs, self.begun, self.stop_at = [], [], stop_at

    def on_train_batch_begin(self, batch, logs=None):
        self.begun.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))
        if self.stop_at is not None and len(self.logs) == self.stop_at:
            self.model.stop_training = True


def _fit(build, x, y, general: bool, monkeypatch, callback=None, **kw):
    """(weights, history, callback's batch logs) of a fit, through the general loop when
    `general`."""
    from bigtrain.engine import epoch_steps
    taken = []
    fused_ok = epoch_steps.fused_ok
    with monkeypatch.context() as m:
        m.setattr(epoch_steps, "fused_ok",
                  lambda e: taken.append(fused_ok(e)) or (not general and taken[-1]))
        model = build()
        h = model.fit(x, y, batch_size=8, verbose=0,
                      callbacks=[] if callback is None else [callback], **kw)
    return model.get_weights(), h.history, taken


def _same(build, x, y, monkeypatch, callback=lambda: None, fused=True, **kw):
    w1, h1, taken = _fit(build, x, y, False, monkeypatch, callback(), **kw)
    w2, h2, _ = _fit(build, x, y, True, monkeypatch, callback(), **kw)
    assert taken and all(t == fused for t in taken)  # which loop the condition chose
    assert len(w1) == len(w2)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(w1, w2))
    np.testing.assert_equal(h1, h2)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_fused_steps_train_as_the_general_loop(monkeypatch, precision):
    _same(_dense, X, Y, monkeypatch, epochs=2, precision=precision)


def test_fused_steps_give_batch_hooks_the_same_logs_and_stop_where_asked(monkeypatch):
    runs = []

    def callback():
        runs.append(BatchLogs(stop_at=30))
        return runs[-1]
    _same(_dense, X, Y, monkeypatch, callback, epochs=3)
    fused, general = runs
    assert fused.begun == general.begun and len(fused.logs) == 30
    np.testing.assert_equal(fused.logs, general.logs)


def test_fused_steps_with_a_masked_sequence_and_two_outputs_take_the_general_loop(
        monkeypatch):
    _same(_two_outputs, X, [Y, X[:, :1]], monkeypatch, fused=False, epochs=2)
    seq = RNG.integers(0, 20, (64, 5))
    seq[:, 3:] = 0  # padding the mask leaves out
    _same(_masked, seq, RNG.integers(0, 3, (64, 5)), monkeypatch, epochs=2)


def _regression():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    i = Input(shape=(6,))
    m = Model(i, Dense(1)(i))
    m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    return m


def test_fused_steps_stop_at_the_same_non_finite_loss(monkeypatch):
    y = X[:, :1].copy()
    y[77] = 3e38  # its square overflows: the loss of step 9 (8-row batches, unshuffled) is inf
    _same(_regression, X, y, monkeypatch, epochs=2, shuffle=False)
    w, h, _ = _fit(_regression, X, y, False, monkeypatch)
    assert h["loss"] == [float("inf")]


def test_a_torch_module_trains_fused_and_sample_weights_take_the_general_loop(monkeypatch):
    def module():
        torch.manual_seed(0)
        m = Model(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
        m.compile(optimizer="sgd", loss=nn.functional.cross_entropy, metrics=["accuracy"])
        return m
    labels = Y.argmax(1)
    _same(module, X, labels, monkeypatch, epochs=2)
    _same(_dense, X, Y, monkeypatch, fused=False, epochs=1,
          sample_weight=np.linspace(0.5, 1.5, len(X)).astype("float32"))


def test_a_plain_fit_makes_no_per_step_call_to_marks_hooks_or_the_feed():
    """Nothing reads marks in one process without a run record: no mark is called, and the
    step's hooks and the feed's per-step generators are not entered either."""
    model = _dense()
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)  # warm
    watched = ("bigtrain/parallel/context.py", "bigtrain/parallel/base.py",
               "bigtrain/parallel/microbatch.py", "bigtrain/engine/step.py",
               "bigtrain/engine/feed.py", "bigtrain/engine/resume.py",
               "bigtrain/engine/finite_check.py")
    calls = collections.Counter()

    def profile(frame, event, arg):
        name = frame.f_code.co_filename.replace("\\", "/")
        if event == "call" and name.endswith(watched):
            calls[f"{name.rsplit('bigtrain/', 1)[1]}:{frame.f_code.co_name}"] += 1
    sys.setprofile(profile)
    try:
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    finally:
        sys.setprofile(None)
    steps = 26
    assert not [k for k, c in calls.items() if c >= steps], calls
