"""Callback hooks as Keras 3 calls them (Keras on torch is the oracle): the order of every
hook in fit, evaluate and predict, and the logs dict each receives, with the same weights
and data on both sides."""
import os

import numpy as np
import pytest

import bigtrain
import bigtrain.callbacks as BC
import bigtrain.layers as BL
import bigtrain.optimizers as BO
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((40, 4)).astype("float32")
Y = (X @ np.array([[3.0], [-2.0], [0.5], [1.0]])).astype("float32")
XV = RNG.standard_normal((16, 4)).astype("float32")
YV = (XV @ np.array([[3.0], [-2.0], [0.5], [1.0]])).astype("float32")
FIT = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)


def twin_models():
    """(keras model, bigtrain model): the same net, weights and compile."""
    keras.utils.set_random_seed(1)
    kin = keras.Input((4,))
    kmodel = keras.Model(kin, keras.layers.Dense(1)(keras.layers.Dense(3, "relu")(kin)))
    kmodel.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
    bigtrain.clear_session()
    bin_ = BL.Input((4,))
    model = Model(bin_, BL.Dense(1)(BL.Dense(3, activation="relu")(bin_)))
    model.set_weights(kmodel.get_weights())
    model.compile(optimizer=BO.SGD(0.01), loss="mse", metrics=["mae"])
    return kmodel, model


def _rounded(logs):
    if logs is None:
        return None  # Keras never passes None: a hook that gets it fails the comparison
    return {k: round(float(v), 4) for k, v in logs.items()}


def recorder(base):
    """A callback of `base` (Keras's or bigtrain's) noting every hook, its index, its logs."""
    class Recorder(base):
        def __init__(self):
            super().__init__()
            self.events = []

    def note(name, indexed):
        if indexed:
            return lambda self, i, logs=None: self.events.append((name, i, _rounded(logs)))
        return lambda self, logs=None: self.events.append((name, _rounded(logs)))

    for name in ("train", "test", "predict"):
        setattr(Recorder, f"on_{name}_begin", note(f"{name}_begin", False))
        setattr(Recorder, f"on_{name}_end", note(f"{name}_end", False))
        if name != "predict":  # predict's batch logs hold arrays, checked apart
            setattr(Recorder, f"on_{name}_batch_begin", note(f"{name}_batch_begin", True))
            setattr(Recorder, f"on_{name}_batch_end", note(f"{name}_batch_end", True))
    Recorder.on_epoch_begin = note("epoch_begin", True)
    Recorder.on_epoch_end = note("epoch_end", True)
    return Recorder()


def test_fit_calls_every_hook_with_keras_logs_in_keras_order():
    """Validation runs the test hooks (on_test_end: the validation logs without "val_");
    begin hooks get {} (not None); on_train_end gets the last epoch's logs."""
    kmodel, model = twin_models()
    ours, theirs = recorder(BC.Callback), recorder(keras.callbacks.Callback)
    model.fit(X, Y, validation_data=(XV, YV), callbacks=[ours], **FIT)
    kmodel.fit(X, Y, validation_data=(XV, YV), callbacks=[theirs], **FIT)
    assert ours.events == theirs.events
    assert [e[0] for e in ours.events].count("test_end") == 2  # one validation per epoch


def test_lambda_callback_takes_keras_signatures():
    """Keras calls `on_train_begin(logs)`, `on_epoch_begin(epoch, logs)`: a LambdaCallback
    whose functions take those arguments (no defaults) runs as in Keras."""
    def lambdas(module, seen):
        return module.LambdaCallback(
            on_train_begin=lambda logs: seen.append(("train_begin", _rounded(logs))),
            on_epoch_begin=lambda epoch, logs: seen.append(("epoch_begin", epoch, logs)),
            on_epoch_end=lambda epoch, logs: seen.append(("epoch_end", epoch, _rounded(logs))),
            on_train_batch_end=lambda batch, logs: seen.append(("batch", batch, _rounded(logs))),
            on_train_end=lambda logs: seen.append(("train_end", _rounded(logs))))
    kmodel, model = twin_models()
    ours, theirs = [], []
    model.fit(X, Y, callbacks=[lambdas(BC, ours)], **FIT)
    kmodel.fit(X, Y, callbacks=[lambdas(keras.callbacks, theirs)], **FIT)
    assert ours == theirs


def test_evaluate_callbacks_get_the_test_hooks_as_in_keras():
    kmodel, model = twin_models()
    ours, theirs = recorder(BC.Callback), recorder(keras.callbacks.Callback)
    ours_result = model.evaluate(X, Y, batch_size=16, callbacks=[ours])
    kmodel.evaluate(X, Y, batch_size=16, verbose=0, callbacks=[theirs])
    assert ours.events == theirs.events
    assert ours.events[-1][1]["loss"] == round(ours_result[0], 4)


def test_predict_callbacks_get_each_batch_outputs_as_in_keras():
    def seen_by(base):
        class Seen(base):
            def __init__(self):
                super().__init__()
                self.events = []

            def on_predict_begin(self, logs=None):
                self.events.append(("begin", logs))

            def on_predict_batch_begin(self, batch, logs=None):
                self.events.append(("batch_begin", batch, logs))

            def on_predict_batch_end(self, batch, logs=None):
                out = np.asarray(logs["outputs"])
                self.events.append(("batch_end", batch, sorted(logs), out.shape,
                                    round(float(out.sum()), 4)))

            def on_predict_end(self, logs=None):
                self.events.append(("end", logs))
        return Seen()
    kmodel, model = twin_models()
    ours, theirs = seen_by(BC.Callback), seen_by(keras.callbacks.Callback)
    model.predict(X, batch_size=16, callbacks=[ours])
    kmodel.predict(X, batch_size=16, verbose=0, callbacks=[theirs])
    assert ours.events == theirs.events


def test_hooks_see_what_earlier_callbacks_add_to_the_epoch_logs_as_in_keras():
    """A LearningRateScheduler adds "learning_rate" to the epoch's logs, which the later
    callbacks and the History see; on_train_end gets the epoch's logs as fit made them."""
    kmodel, model = twin_models()
    ours, theirs = recorder(BC.Callback), recorder(keras.callbacks.Callback)
    history = model.fit(X, Y, callbacks=[BC.LearningRateScheduler(lambda e: 0.01 / (e + 1)),
                                         ours], **FIT)
    kmodel.fit(X, Y, callbacks=[keras.callbacks.LearningRateScheduler(lambda e: 0.01 / (e + 1)),
                                theirs], **FIT)
    assert ours.events == theirs.events
    assert "learning_rate" not in ours.events[-1][1]
    assert history.history["learning_rate"] == pytest.approx([0.01, 0.005])
