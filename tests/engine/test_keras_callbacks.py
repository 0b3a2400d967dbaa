"""Callbacks in real fits, held against Keras 3 (torch backend) on the same data and
initial weights: what each writes, keeps and is called with."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import csv  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bigtrain.callbacks as bcb  # noqa: E402
import bigtrain.optimizers as bo  # noqa: E402
from bigtrain.layers import Dense, Input  # noqa: E402
from bigtrain.models import Model  # noqa: E402

keras = pytest.importorskip("keras")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(240, 12)).astype("float32")
Y = (X @ RNG.normal(size=(12, 4))).argmax(1).astype("int64")
VX, VY = X[:80] + 0.5 * RNG.normal(size=(80, 12)).astype("float32"), Y[:80]
FIT = dict(batch_size=64, shuffle=False, verbose=0)


def pair(lr=0.1, metrics=("accuracy",)):
    """(keras model, bigtrain model): the same Dense(8)-Dense(4) net and weights, SGD."""
    keras.utils.set_random_seed(1)
    kin = keras.Input((12,))
    k = keras.Model(kin, keras.layers.Dense(4, activation="softmax")(
        keras.layers.Dense(8, activation="relu")(kin)))
    inp = Input(shape=(12,))
    b = Model(inputs=inp, outputs=Dense(4, activation="softmax")(
        Dense(8, activation="relu")(inp)))
    b.set_weights([np.array(w) for w in k.get_weights()])
    k.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
              metrics=list(metrics))
    b.compile(optimizer=bo.SGD(lr), loss="sparse_categorical_crossentropy",
              metrics=list(metrics))
    return k, b


def both(run):
    """run(side, model, callbacks module) for Keras and bigtrain: {side: result}."""
    k, b = pair()
    return {"keras": run("keras", k, keras.callbacks), "bt": run("bt", b, bcb)}


def files(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# -- ModelCheckpoint -------------------------------------------------------------------
def test_best_checkpoint_survives_a_worse_second_fit(tmp_path):
    """A ModelCheckpoint reused by a second, worse fit keeps the first fit's best file:
    `best` is set once (bigtrain reset it each fit and overwrote the file)."""
    def run(side, m, cb):
        path = str(tmp_path / f"{side}.weights.h5")
        ck = cb.ModelCheckpoint(path, save_best_only=True, save_weights_only=True)
        h = m.fit(X, Y, epochs=3, validation_data=(VX, VY), callbacks=[ck], **FIT)
        best = m.get_weights()
        m.fit(X[:64], Y[:64] * 0 + 3, epochs=2, validation_data=(VX, VY), callbacks=[ck],
              **FIT)  # every label 3: val_loss gets worse
        return min(h.history["val_loss"]), float(ck.best), best, m
    got = both(run)
    assert got["bt"][1] == pytest.approx(got["keras"][1], rel=1e-4)
    assert got["bt"][1] == pytest.approx(got["bt"][0])
    _, b = pair()
    b.load_weights(str(tmp_path / "bt.weights.h5"))
    assert max(np.abs(w - v).max() for w, v in zip(b.get_weights(), got["bt"][2])) < 1e-7


def test_missing_monitor_saves_every_epoch_and_unknown_auto_raises(tmp_path):
    def run(side, m, cb):
        folder = tmp_path / side
        m.fit(X, Y, epochs=2, callbacks=[cb.ModelCheckpoint(
            str(folder / "e{epoch}.keras"), save_best_only=True, mode="min")], **FIT)
        with pytest.raises(ValueError, match="val_nope"):
            m.fit(X, Y, epochs=1, callbacks=[cb.ModelCheckpoint(
                str(folder / "n.keras"), monitor="val_nope", save_best_only=True)], **FIT)
        return files(folder)
    got = both(run)
    assert got["bt"] == got["keras"] == ["e1.keras", "e2.keras"]


@pytest.mark.parametrize("kw", [
    dict(filepath="f-{epoch:02d}-{batch:02d}.weights.h5", save_weights_only=True,
         save_freq=3),
    dict(filepath="t-{epoch:02d}.keras", save_best_only=True, initial_value_threshold=1.3),
])
def test_save_freq_batches_and_initial_threshold_name_the_same_files(tmp_path, kw):
    def run(side, m, cb):
        folder = tmp_path / side
        ck = cb.ModelCheckpoint(**{**kw, "filepath": str(folder / kw["filepath"])})
        h = m.fit(X, Y, epochs=4, validation_data=(VX, VY), callbacks=[ck], **FIT)
        return files(folder), h.history["val_loss"]
    got = both(run)
    assert got["bt"][0] == got["keras"][0] and got["bt"][0], (got, "threshold too low?")


# -- CSVLogger -------------------------------------------------------------------------
def test_csv_logger_keeps_validation_columns_with_validation_freq(tmp_path):
    def run(side, m, cb):
        path = tmp_path / f"{side}.csv"
        m.fit(X, Y, epochs=4, validation_data=(VX, VY), validation_freq=2,
              callbacks=[cb.CSVLogger(str(path))], **FIT)
        return list(csv.reader(path.open()))
    got = both(run)
    assert got["bt"][0] == got["keras"][0]
    for mine, theirs in zip(got["bt"][1:], got["keras"][1:], strict=True):
        assert [v == "NA" for v in mine] == [v == "NA" for v in theirs]
        assert [float(v) for v in mine if v != "NA"] == \
            pytest.approx([float(v) for v in theirs if v != "NA"], rel=1e-4)


# -- batch hooks -----------------------------------------------------------------------
def test_batch_hook_aliases_and_running_mean_logs():
    """on_batch_end alone is called (Keras's alias), and the batch logs are the epoch's
    running means of the loss and metrics (bigtrain passed {'size': ...})."""
    def run(side, m, cb):
        seen = []

        class Alias(cb.Callback):
            def on_batch_end(self, batch, logs=None):
                seen.append((batch, dict(logs)))
        m.fit(X, Y, epochs=2, callbacks=[Alias()], **FIT)
        return seen
    got = both(run)
    assert [b for b, _ in got["bt"]] == [b for b, _ in got["keras"]] == [0, 1, 2, 3] * 2
    for (_, mine), (_, theirs) in zip(got["bt"], got["keras"]):
        assert sorted(mine) == sorted(theirs) == ["accuracy", "loss"]
        assert {k: float(v) for k, v in mine.items()} == \
            pytest.approx({k: float(v) for k, v in theirs.items()}, rel=1e-4)


def test_lambda_callback_and_terminate_on_nan_as_keras(capsys):
    def run(side, m, cb):
        calls = []
        lam = cb.LambdaCallback(on_epoch_end=lambda epoch, logs: calls.append(epoch),
                                on_batch_begin=lambda batch, logs: calls.append(-1))
        m.fit(X, Y, epochs=2, callbacks=[lam], **FIT)
        return calls
    got = both(run)
    assert got["bt"] == got["keras"]
    nan = bcb.TerminateOnNaN()
    nan.set_model(type("M", (), {"stop_training": False})())
    nan.on_train_batch_end(0, {"loss": 0.5})
    assert not nan.model.stop_training
    nan.on_train_batch_end(3, {"loss": math.inf})
    assert nan.model.stop_training and "Batch 3: Invalid loss" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="batch 2"):
        bcb.TerminateOnNaN(raise_error=True).on_train_batch_end(2, {"loss": math.nan})


# -- NaN stop --------------------------------------------------------------------------
def test_nan_epoch_is_in_the_history(capsys):
    """Keras with TerminateOnNaN records the NaN epoch; bigtrain's own check stopped with an
    empty History, and its message spoke of a shuffled order without shuffling."""
    k, b = pair(lr=1e20, metrics=())
    hk = k.fit(X, Y, epochs=3, callbacks=[keras.callbacks.TerminateOnNaN()], **FIT)
    hb = b.fit(X, Y, epochs=3, **FIT)
    assert hb.epoch == hk.epoch == [0]
    assert sorted(hb.history) == sorted(hk.history) == ["loss"]
    assert math.isnan(hb.history["loss"][0]) and math.isnan(hk.history["loss"][0])
    assert "shuffled" not in capsys.readouterr().out


# -- the rest of Keras's callbacks -----------------------------------------------------
@pytest.mark.parametrize("name", ["BackupAndRestore", "RemoteMonitor", "SwapEMAWeights"])
def test_callbacks_not_offered_say_what_to_use(name):
    with pytest.raises(NotImplementedError, match=f"does not offer {name}"):
        getattr(bcb, name)("somewhere")


def test_tensorboard_batch_scalars_histograms_and_refusals(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _, b = pair()
    b.fit(X, Y, epochs=2, callbacks=[bcb.TensorBoard(tmp_path, histogram_freq=1,
                                                     update_freq=2)], **FIT)
    train = EventAccumulator(str(tmp_path / "train")).Reload()
    # 4 batches an epoch: Keras's steps 2, 4, 6, 8 of the fit's 1-based batch count
    assert [e.step for e in train.Scalars("batch_loss")] == [2, 4, 6, 8]
    assert [e.step for e in train.Scalars("epoch_loss")] == [0, 1]
    assert len(train.Tags()["histograms"]) == 4  # two Dense layers: kernel and bias each
    with pytest.raises(ValueError, match="write_images"):
        bcb.TensorBoard(tmp_path, write_images=True)
    with pytest.raises(ValueError, match="update_freq"):
        bcb.TensorBoard(tmp_path, update_freq="sometimes")


def test_progbar_logger_follows_fit_verbose(capsys):
    _, b = pair()
    b.fit(X, Y, epochs=2, batch_size=64, shuffle=False, verbose=2,
          callbacks=[bcb.ProgbarLogger()])
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" - ")[0] for ln in lines] == ["Epoch 1/2", "Epoch 2/2"]  # no double bar
