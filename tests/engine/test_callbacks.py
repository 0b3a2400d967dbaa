"""Callbacks driven by hand with a tiny fake model, hook by hook as the loop calls them."""
import csv
import io
import math
import pathlib
import re

import numpy as np
import pytest
import torch

from bigtrain.engine.callbacks import (CSVLogger, CallbackList, EarlyStopping, History,
                                       LearningRateScheduler, ModelCheckpoint, ProgressBar,
                                       ReduceLROnPlateau, TensorBoard)


class FakeModel:
    """What the callbacks may touch on a bigtrain Model: a real optimizer over one
    parameter, stop_training, save/save_weights, get/set_weights (copies)."""

    def __init__(self, lr=0.1, groups=1):
        self.w = torch.nn.Parameter(torch.zeros(2))
        extra = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups - 1)]
        self.optimizer = torch.optim.SGD([{"params": [p]} for p in [self.w, *extra]], lr=lr)
        self.stop_training = False
        self.saved = []  # (kind, path)

    def save(self, path):
        self.saved.append(("model", path))
        pathlib.Path(path).write_text("model")

    def save_weights(self, path):
        self.saved.append(("weights", path))
        pathlib.Path(path).write_text("weights")

    def get_weights(self):
        return [self.w.detach().numpy().copy()]

    def set_weights(self, weights):
        with torch.no_grad():
            self.w.copy_(torch.as_tensor(weights[0]))


def drive(callbacks, model, epoch_logs, steps=4, batch_size=8, is_main=True):
    """Run the hooks like the training loop: the weights of epoch e are all equal to e.
    Returns the number of epochs run (training stops when a callback asks)."""
    params = dict(epochs=len(epoch_logs), steps=steps, samples=steps * batch_size,
                  batch_size=batch_size, verbose=1, metrics=sorted(epoch_logs[0]))
    cbs = CallbackList(callbacks, model, params, is_main=is_main)
    cbs.on_train_begin()
    run = 0
    for epoch, logs in enumerate(epoch_logs):
        cbs.on_epoch_begin(epoch)
        for batch in range(steps):
            cbs.on_train_batch_begin(batch)
            cbs.on_train_batch_end(batch, {"size": batch_size})
        with torch.no_grad():
            model.w.fill_(float(epoch))
        cbs.on_epoch_end(epoch, dict(logs))
        run += 1
        if model.stop_training:
            break
    cbs.on_train_end()
    return run


def losses(*values, key="val_loss"):
    return [{"loss": 1.0, key: v} for v in values]


# -- CSVLogger ---------------------------------------------------------------------------
def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    path = tmp_path / "sub" / "log.csv"
    drive([CSVLogger(path)], FakeModel(), [{"loss": 0.5, "accuracy": 0.75},
                                           {"loss": 0.25, "accuracy": 0.875}])
    rows = list(csv.reader(path.open()))
    # no val_* key: Keras adds a val_ column per key, NA until validation runs
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[3:] for r in rows[1:]] == [["NA", "NA"]] * 2
    assert [[float(v) for v in r[:3]] for r in rows[1:]] == [[0, 0.75, 0.5], [1, 0.875, 0.25]]


def test_csv_logger_append_separator_and_missing_values(tmp_path):
    path = tmp_path / "log.tsv"
    drive([CSVLogger(path, separator="\t")], FakeModel(), [{"loss": 1.0, "val_loss": 2.0}])
    with pytest.warns(RuntimeWarning, match="extra"):
        drive([CSVLogger(path, separator="\t", append=True)], FakeModel(),
              [{"loss": 0.5}, {"loss": 0.25, "val_loss": 1.5, "extra": 3.0}])
    lines = path.read_text().splitlines()
    assert lines == ["epoch\tloss\tval_loss", "0\t1.0\t2.0", "0\t0.5\tNA", "1\t0.25\t1.5"]
    drive([CSVLogger(path)], FakeModel(), [{"loss": 9.0}])  # no append: overwrite
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,9.0,NA"]


# -- TensorBoard ------------------------------------------------------------------------
def test_tensorboard_writes_scalars_readable_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    drive([TensorBoard(tmp_path)], FakeModel(),
          [{"loss": 0.9, "val_loss": 1.1}, {"loss": 0.4, "val_loss": 0.7}])
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))
    train = EventAccumulator(str(tmp_path / "train")).Reload()
    val = EventAccumulator(str(tmp_path / "validation")).Reload()
    assert [(e.step, round(e.value, 5)) for e in train.Scalars("epoch_loss")] == \
        [(0, 0.9), (1, 0.4)]
    assert [round(e.value, 5) for e in val.Scalars("epoch_loss")] == [1.1, 0.7]


# -- ModelCheckpoint --------------------------------------------------------------------
def test_checkpoint_names_files_from_epoch_and_logs(tmp_path):
    model = FakeModel()
    pattern = str(tmp_path / "ckpt" / "{epoch:02d}-{val_loss:.2f}.safetensors")
    drive([ModelCheckpoint(pattern)], model, losses(0.5, 0.4321))
    assert [pathlib.Path(p).name for _, p in model.saved] == \
        ["01-0.50.safetensors", "02-0.43.safetensors"]
    assert all(kind == "model" and pathlib.Path(p).exists() for kind, p in model.saved)


def test_checkpoint_best_only_saves_on_improvement(tmp_path):
    model = FakeModel()
    cb = ModelCheckpoint(str(tmp_path / "{epoch}.pt"), save_best_only=True,
                         save_weights_only=True)
    drive([cb], model, losses(0.5, 0.4, 0.6, 0.3, 0.3))
    assert model.saved == [("weights", str(tmp_path / f"{e}.pt")) for e in (1, 2, 4)]
    assert cb.best == 0.3


def test_checkpoint_auto_mode_maximises_accuracy(tmp_path):
    model = FakeModel()
    cb = ModelCheckpoint(str(tmp_path / "{epoch}.pt"), monitor="val_accuracy",
                         save_best_only=True)
    assert cb.mode == "max"
    drive([cb], model, losses(0.5, 0.7, 0.6, 0.8, key="val_accuracy"))
    assert [pathlib.Path(p).name for _, p in model.saved] == ["1.pt", "2.pt", "4.pt"]


def test_checkpoint_warns_on_missing_monitor_and_explains_bad_fields(tmp_path):
    model = FakeModel()
    with pytest.warns(RuntimeWarning, match="only with 'val_loss' in the logs"):
        drive([ModelCheckpoint(str(tmp_path / "m.pt"), save_best_only=True)], model,
              [{"loss": 1.0}])
    assert model.saved == [("model", str(tmp_path / "m.pt"))]  # Keras: saves every time
    with pytest.raises(KeyError, match="val_acc"):
        drive([ModelCheckpoint(str(tmp_path / "{val_acc}.pt"))], model, [{"loss": 1.0}])


# -- EarlyStopping ----------------------------------------------------------------------
def test_early_stopping_stops_after_patience_and_restores_best():
    model = FakeModel()
    cb = EarlyStopping(patience=2, restore_best_weights=True)
    run = drive([cb], model, losses(1.0, 0.8, 0.9, 0.85, 0.7, 0.6))
    # best at epoch 1; epochs 2 and 3 do not improve -> stop after epoch 3
    assert run == 4 and cb.stopped_epoch == 3 and cb.best_epoch == 1
    assert model.stop_training
    torch.testing.assert_close(model.w.detach(), torch.full((2,), 1.0))  # epoch 1 weights


def test_early_stopping_min_delta_mode_and_start_epoch():
    # Improvements smaller than min_delta do not count.
    cb = EarlyStopping(min_delta=0.1, patience=1)
    assert drive([cb], FakeModel(), losses(1.0, 0.95, 0.92, 0.5)) == 2
    # auto mode maximises accuracy; without restore_best_weights the weights stay.
    model = FakeModel()
    cb = EarlyStopping(monitor="val_accuracy", patience=1)
    assert drive([cb], model, losses(0.5, 0.6, 0.55, 0.9, key="val_accuracy")) == 3
    assert model.w[0].item() == 2.0
    # Epochs before start_from_epoch are ignored (a bad warm-up cannot stop training).
    cb = EarlyStopping(patience=0, start_from_epoch=2)
    assert drive([cb], FakeModel(), losses(1.0, 2.0, 3.0, 4.0, 5.0)) == 4


def test_early_stopping_baseline_must_be_beaten():
    # Improving, but never below the baseline 0.5: improvements do not reset the count,
    # so the first worse epoch stops training (Keras semantics)...
    run = losses(0.9, 0.8, 0.7, 0.6, 0.65, 0.3)
    assert drive([EarlyStopping(patience=2, baseline=0.5)], FakeModel(), run) == 5
    # ...while without a baseline the count restarted at 0.6 and training goes on.
    assert drive([EarlyStopping(patience=2)], FakeModel(), run) == 6
    # Beating the baseline resets the count as usual.
    run = losses(0.4, 0.3, 0.35, 0.2)
    assert drive([EarlyStopping(patience=2, baseline=0.5)], FakeModel(), run) == 4


def test_early_stopping_warns_without_monitor_and_never_stops():
    cb = EarlyStopping(patience=0)
    with pytest.warns(RuntimeWarning, match="val_loss"):
        assert drive([cb], FakeModel(), [{"loss": 1.0}] * 3) == 3


# -- learning rate ----------------------------------------------------------------------
def lrs(model):
    return [g["lr"] for g in model.optimizer.param_groups]


def _keras_reduce_lr(values, lr, **kw):
    """Keras's own ReduceLROnPlateau driven by `values` of val_loss: the learning rate it
    logs each epoch."""
    import os
    import types
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    cb = keras.callbacks.ReduceLROnPlateau(**kw)
    cb.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=lr)))
    cb.on_train_begin()
    out = []
    for epoch, v in enumerate(values):
        logs = {"val_loss": v}
        cb.on_epoch_end(epoch, logs)
        out.append(logs["learning_rate"])
    return out


@pytest.mark.parametrize("values, kw", [
    ([1.0] * 9, dict(factor=0.5, patience=2, cooldown=1, min_lr=0.02)),
    ([1.0] * 9, dict(factor=0.5, patience=1, cooldown=2)),
    ([1.0, 0.9, 0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7], dict(factor=0.5, patience=1,
                                                             cooldown=1)),
    ([1.0] * 5, dict(factor=0.5, patience=1, min_lr=0.08)),
])
def test_reduce_lr_on_plateau_logs_and_reduces_as_keras(values, kw):
    """The learning rate of each epoch in the History equals Keras's, cooldown and floor
    included (bigtrain had followed torch's cooldown: [1, 1, .5, .5, .25] against Keras's
    [1, 1, .5, .25, .125] with patience 1, cooldown 1)."""
    model = FakeModel(lr=0.1, groups=2)
    history = History()
    drive([ReduceLROnPlateau(**kw), history], model, losses(*values))
    assert history.history["learning_rate"] == pytest.approx(_keras_reduce_lr(values, 0.1, **kw))
    assert lrs(model)[0] == lrs(model)[1]


def test_reduce_lr_resets_wait_on_improvement_and_rejects_bad_factor():
    model = FakeModel(lr=0.1)
    drive([ReduceLROnPlateau(patience=2)], model, losses(1.0, 1.0, 0.5, 0.5, 0.2))
    assert lrs(model) == [0.1]
    model = FakeModel(lr=0.1)  # patience=0: every epoch without improvement reduces
    drive([ReduceLROnPlateau(patience=0, factor=0.5)], model, losses(1.0, 0.5, 0.7, 0.1))
    assert lrs(model) == [0.05]
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=1.0)


def test_learning_rate_scheduler_sets_lr_each_epoch():
    model = FakeModel(lr=1.0, groups=2)
    seen = []

    class Spy(History):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(lrs(model))

    drive([LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr), Spy()],
          model, losses(1, 1, 1))
    assert seen == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]
    drive([LearningRateScheduler(lambda epoch: 0.1 * (epoch + 1))], model, losses(1, 1))
    assert lrs(model) == pytest.approx([0.2, 0.2])
    with pytest.raises(ValueError, match="returned 'fast'"):
        drive([LearningRateScheduler(lambda e, lr: "fast")], model, losses(1))


def test_tensor_learning_rates_stay_tensors():
    model = FakeModel()
    model.optimizer = torch.optim.Adam([model.w], lr=torch.tensor(0.01))
    drive([LearningRateScheduler(lambda e, lr: 0.003)], model, losses(1))
    lr = model.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and math.isclose(lr.item(), 0.003, rel_tol=1e-6)


# -- History and ranks ------------------------------------------------------------------
def test_history_records_every_epoch_and_attaches_to_model():
    model, h = FakeModel(), History()
    drive([h], model, [{"loss": 0.5, "val_loss": 0.6}, {"loss": 0.25, "val_loss": 0.4}])
    assert h.history == {"loss": [0.5, 0.25], "val_loss": [0.6, 0.4]}
    assert h.epoch == [0, 1] and model.history is h


def test_rank_local_callbacks_run_on_every_rank(tmp_path):
    everywhere = [EarlyStopping(), ReduceLROnPlateau(), LearningRateScheduler(lambda e, lr: lr),
                  History()]
    rank0 = [ProgressBar(), CSVLogger(tmp_path / "x.csv"), TensorBoard(tmp_path),
             ModelCheckpoint(tmp_path / "m.pt")]
    kept = CallbackList(everywhere + rank0, FakeModel(), {}, is_main=False).callbacks
    assert kept == everywhere
    assert not any(cb.wants_batch_logs for cb in everywhere + rank0)
    # Callbacks that read weights ask the loop to gather them on every rank first.
    assert [getattr(cb, "needs_weights", False) for cb in everywhere + rank0] == \
        [False] * 7 + [True]
    assert EarlyStopping(restore_best_weights=True).needs_weights



def test_batch_hooks_reach_only_callbacks_that_implement_them():
    from bigtrain.engine.callbacks import Callback
    seen = []

    class Begin(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(("begin", batch))

    assigned = Callback()  # a hook set on the instance counts too
    assigned.on_train_batch_end = lambda batch, logs=None: seen.append(("end", batch, logs))
    quiet = CallbackList([History()], FakeModel(), {}, is_main=True)
    assert not quiet.has_batch_begin and not quiet.has_batch_end
    cbs = CallbackList([History(), Begin(), assigned], FakeModel(), {}, is_main=True)
    assert cbs.has_batch_begin and cbs.has_batch_end
    cbs.on_train_batch_begin(0)
    cbs.on_train_batch_end(0, {"size": 8})
    assert seen == [("begin", 0), ("end", 0, {"size": 8})]

# -- ProgressBar ------------------------------------------------------------------------
ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def no_forced_terminal(monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS"):
        monkeypatch.delenv(var, raising=False)


def test_progress_plain_output_when_not_a_terminal(capsys, no_forced_terminal):
    drive([ProgressBar(verbose=1)], FakeModel(),
          [{"loss": 0.12344, "accuracy": 0.91}, {"loss": 0.1, "accuracy": 0.95,
                                                 "val_loss": 0.2}])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 2, out  # short epochs: one line each, no bar
    assert re.fullmatch(r"Epoch 1/2 - 4/4 - \d+\.\d+s - \d+ samples/s - "
                        r"loss: 0\.1234 - accuracy: 0\.9100", lines[0]), lines[0]
    assert lines[1].startswith("Epoch 2/2") and lines[1].endswith("val_loss: 0.2000")
    assert not ANSI.search(out) and "\r" not in out


def test_progress_plain_lines_every_tenth_of_a_long_epoch(capsys, no_forced_terminal):
    drive([ProgressBar(verbose=1, plain_after_s=0.0)], FakeModel(), [{"loss": 1.0}], steps=40)
    lines = capsys.readouterr().out.splitlines()
    progress, final = lines[:-1], lines[-1]
    assert len(progress) == 9  # 10%, 20%, ..., 90%; the epoch line reports 100%
    assert [int(re.search(r" (\d+)/40 ", ln).group(1)) for ln in progress] == \
        list(range(4, 40, 4))
    assert all("ETA" in ln for ln in progress) and final.startswith("Epoch 1/1 - 40/40")


def test_progress_verbose_two_and_zero(capsys, no_forced_terminal):
    drive([ProgressBar(verbose=2, plain_after_s=0.0)], FakeModel(), losses(1, 2), steps=40)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" - ")[0] for ln in lines] == ["Epoch 1/2", "Epoch 2/2"]
    drive([ProgressBar(verbose=0)], FakeModel(), losses(1, 2))
    assert capsys.readouterr().out == ""


def test_progress_live_bar_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich treats the stream as a terminal
    buf = io.StringIO()
    bar = ProgressBar(verbose=1, file=buf)
    drive([bar], FakeModel(), [{"loss": 0.5}], steps=3)
    out = buf.getvalue()
    assert ANSI.search(out)  # the live bar drew (and erased) itself
    assert "Epoch 1/1 - 3/3 - " in out and "loss: 0.5000" in out
    assert bar._progress is None  # the live display is stopped at epoch end


def test_progress_rejects_bad_verbose():
    with pytest.raises(ValueError, match="verbose"):
        ProgressBar(verbose=3)


@pytest.mark.parametrize("strategy", ["zero3", "tensor", "pipeline"])
def test_restore_best_weights_on_several_ranks_returns_the_best_epoch(strategy):
    """Sharded, tensor-parallel and pipeline fits crashed at the end (a rank read weights it
    does not hold, or loaded a full state into DTensors). The best epoch is the first here
    (mode='max' on a falling loss), so the fit must return epoch 0's weights, as one
    process does."""
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 13)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 40)]

    def fitted(epochs, **kw):
        bigtrain.clear_session()
        bigtrain.set_seed(0)
        inp = Input(shape=(13,))
        model = Model(inp, Dense(3, activation="softmax")(Dense(8, activation="relu")(inp)))
        model.compile(optimizer="sgd", loss="categorical_crossentropy", learning_rate=0.1)
        model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, shuffle=False, **kw)
        return model.get_weights()

    first = fitted(1)
    stop = EarlyStopping(monitor="loss", mode="max", patience=5, restore_best_weights=True)
    got = fitted(3, strategy=strategy, devices=2, timeout=60, callbacks=[stop])
    trained = fitted(3)
    assert max(np.abs(a - b).max() for a, b in zip(first, trained)) > 1e-3  # can tell
    assert max(np.abs(a - b).max() for a, b in zip(first, got)) < 1e-5


def test_learning_rate_scheduler_puts_each_epochs_rate_in_the_history():
    history = History()
    drive([LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)), history], FakeModel(),
          losses(1.0, 1.0, 1.0))
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])
