"""Checkpoints in one process, through `fit`: automatic resume after an interruption (same
numbers as a run never interrupted, dropout included: the RNG states come back), the folder
layout and `keep_last`, a crash in the middle of a save, export to safetensors, and the
errors for a checkpoint that does not fit (another model, another optimizer, damaged
folders, another batch size mid-epoch)."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as torch_dcp

import bigtrain
from bigtrain.callbacks import Callback
from bigtrain.engine import checkpoint as ckpt_mod
from bigtrain.engine.checkpoint import CheckpointError, export_safetensors, find_checkpoint
from bigtrain.engine.checkpoint_state import rng_state, set_rng_state
from bigtrain.layers import Dense, Dropout, Input
from bigtrain.models import Model

STEPS, EPOCHS = 6, 2  # 60 samples / batch 10; 12 optimizer steps in all
FIT = dict(batch_size=10, epochs=EPOCHS, verbose=0)


class Interrupt(Exception):
    pass


class StopAt(Callback):
    """Raises `error` at the start of (epoch, batch) on every rank: a run killed there
    (tests/data use it too, with RuntimeError and KeyboardInterrupt)."""

    main_process_only = False

    def __init__(self, epoch: int, batch: int, error: type[BaseException] = Interrupt):
        super().__init__()
        self.at, self.epoch, self.error = (epoch, batch), -1, error

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise self.error(f"stopped at {self.at}")


class CountBatches(Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


def make_model(seed=0, hidden=16, optimizer="adam"):
    """Dropout makes the result depend on the torch RNG; `seed` changes the initial weights."""
    bigtrain.clear_session()
    bigtrain.set_seed(seed)
    inp = Input(shape=(20,))
    out = Dense(3, activation="softmax")(Dropout(0.5)(Dense(hidden, activation="relu")(inp)))
    model = Model(inp, out)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", learning_rate=1e-2)
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 20)).astype("float32")
    return x, np.eye(3, dtype="float32")[rng.integers(0, 3, 60)]


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted():
    model = make_model()
    model.fit(*data(), **FIT)
    assert not same(weights(model), weights(make_model(seed=1)))
    return weights(model)


def interrupted_run(folder, epoch=1, batch=2, **kw):
    with pytest.raises(Interrupt):
        make_model().fit(*data(), **FIT, checkpoint_dir=folder, callbacks=[StopAt(epoch, batch)],
                         **kw)


def test_interrupted_fit_resumes_where_it_stopped(tmp_path, uninterrupted):
    folder = str(tmp_path / "ckpt")
    interrupted_run(folder, checkpoint_every=2)  # stops before step 9; step 8 was saved
    model, counter = make_model(seed=1), CountBatches()  # other weights, other RNG state
    history = model.fit(*data(), **FIT, checkpoint_dir=folder, checkpoint_every=2,
                        callbacks=[counter])
    assert history.epoch == [1] and counter.count == STEPS - 2
    assert same(weights(model), uninterrupted)  # bit for bit, dropout masks included
    again, counter = make_model(seed=1), CountBatches()  # finished: nothing left to train
    again.fit(*data(), **FIT, checkpoint_dir=folder, callbacks=[counter])
    assert counter.count == 0 and same(weights(again), uninterrupted)


def test_layout_pointer_and_keep_last(tmp_path):
    folder = tmp_path / "ckpt"
    make_model().fit(*data(), **FIT, checkpoint_dir=str(folder), checkpoint_every=1, keep_last=2)
    assert sorted(os.listdir(folder)) == ["latest", "step-00000011", "step-00000012"]
    assert json.loads((folder / "latest").read_text()) == {"step": 12, "path": "step-00000012"}
    meta = json.loads((folder / "step-00000012" / "meta.json").read_text())
    assert meta["position"] == {"epoch": 2, "batch": 0, "step": 12}
    assert meta["optimizer"] == "Adam" and meta["param_groups"][0]["lr"] == 1e-2
    assert (folder / "step-00000011" / "rng-rank00000.json").is_file()


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, uninterrupted):
    folder = tmp_path / "ckpt"
    original = ckpt_mod.Checkpointer._write_meta

    def crash_at_step_3(self, tmp, position, *rest):
        if position.step == 3:  # DCP has written the tensors; meta.json never comes
            raise OSError("disk full")
        original(self, tmp, position, *rest)
    monkeypatch.setattr(ckpt_mod.Checkpointer, "_write_meta", crash_at_step_3)
    with pytest.raises(OSError, match="disk full"):
        make_model().fit(*data(), **FIT, checkpoint_dir=str(folder), checkpoint_every=1)
    monkeypatch.undo()
    partial = folder / "step-00000003.tmp"
    assert (partial / ".metadata").is_file() and not (partial / "meta.json").exists()
    assert find_checkpoint(str(folder)) == str(folder / "step-00000002")
    model, counter = make_model(seed=1), CountBatches()
    model.fit(*data(), **FIT, checkpoint_dir=str(folder), checkpoint_every=1, keep_last=20,
              callbacks=[counter])
    assert counter.count == EPOCHS * STEPS - 2 and same(weights(model), uninterrupted)
    assert not partial.exists() and (folder / "step-00000003" / "meta.json").is_file()


def test_export_safetensors_holds_the_full_weights(tmp_path):
    model = make_model()
    model.fit(*data(), **FIT, checkpoint_dir=str(tmp_path / "ckpt"))
    shapes = export_safetensors(str(tmp_path / "ckpt"), str(tmp_path / "w.safetensors"))
    assert shapes == {k: tuple(v.shape) for k, v in weights(model).items()}
    fresh = make_model(seed=1)
    fresh.load_weights(str(tmp_path / "w.safetensors"))
    assert same(weights(fresh), weights(model))


def test_another_model_names_the_keys_and_shapes(tmp_path):
    interrupted_run(str(tmp_path / "ckpt"), checkpoint_every=1)
    other = make_model(hidden=17)
    with pytest.raises(CheckpointError) as err:
        other.fit(*data(), **FIT, checkpoint_dir=str(tmp_path / "ckpt"))
    ours, theirs = weights(make_model()), weights(other)
    for key in (k for k in ours if ours[k].shape != theirs[k].shape):
        assert f"model.{key} checkpoint {tuple(ours[key].shape)} vs this run " \
               f"{tuple(theirs[key].shape)}" in str(err.value)


def test_another_optimizer_says_which_was_saved(tmp_path):
    interrupted_run(str(tmp_path / "ckpt"), checkpoint_every=1)
    with pytest.raises(CheckpointError, match="saved with optimizer Adam but this run uses SGD"):
        make_model(optimizer="sgd").fit(*data(), **FIT, checkpoint_dir=str(tmp_path / "ckpt"))


def test_mid_epoch_resume_needs_the_same_batch_size(tmp_path):
    interrupted_run(str(tmp_path / "ckpt"), checkpoint_every=1)
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 10 vs now 12"):
        make_model().fit(*data(), **{**FIT, "batch_size": 12}, checkpoint_dir=str(tmp_path / "ckpt"))


@pytest.mark.parametrize("damage", ["pointer to nothing", "pointer not json", "meta not json",
                                    "no dcp metadata", "resume path missing"])
def test_damaged_checkpoints_fail_clearly(tmp_path, damage):
    folder = tmp_path / "ckpt"
    interrupted_run(str(folder), checkpoint_every=1)
    newest = folder / json.loads((folder / "latest").read_text())["path"]
    resume = "auto"
    if damage == "pointer to nothing":
        (folder / "latest").write_text('{"step": 99, "path": "step-00000099"}')
    elif damage == "pointer not json":
        (folder / "latest").write_text("{oops")
    elif damage == "meta not json":
        (newest / "meta.json").write_text("garbage")
    elif damage == "no dcp metadata":
        (newest / ".metadata").unlink()
    else:
        resume = str(folder / "step-00000777")
    with pytest.raises(CheckpointError) as err:
        make_model().fit(*data(), **FIT, checkpoint_dir=str(folder), resume=resume)
    assert str(folder) in str(err.value) and "resume='never'" in str(err.value)


def test_bad_options_fail_before_training():
    with pytest.raises(ValueError, match="no checkpoint_dir"):
        make_model().fit(*data(), **FIT, checkpoint_every=2)
    with pytest.raises(ValueError, match="keep_last"):
        make_model().fit(*data(), **FIT, checkpoint_dir="unused", keep_last=0)
    assert not os.path.exists("unused")


def test_rng_states_round_trip_through_json():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    saved = json.loads(json.dumps(rng_state()))
    first = (torch.rand(4), np.random.rand(4), random.random())
    torch.rand(10), np.random.rand(10), random.random()
    set_rng_state(saved)
    again = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_a_checkpoint_whose_state_no_longer_matches_its_checksum_is_refused(tmp_path):
    import json

    from bigtrain.engine.checkpoint import find_checkpoint
    interrupted_run(str(tmp_path / "ckpt"), checkpoint_every=1)
    meta_path = os.path.join(find_checkpoint(str(tmp_path / "ckpt")), "meta.json")
    meta = json.loads(open(meta_path).read())
    assert len(meta["model_sha256"]) == 64
    meta["model_sha256"] = "0" * 64  # the recorded state and the stored tensors disagree
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(CheckpointError, match="checksum .* damaged"):
        make_model().fit(*data(), **FIT, checkpoint_dir=str(tmp_path / "ckpt"))


def test_state_digest_depends_on_values_not_on_layout():
    from bigtrain.engine.checkpoint import state_digest
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    b = {"b": torch.zeros(3), "w": torch.arange(6.0).reshape(2, 3).T.contiguous().T}
    assert state_digest(a) == state_digest(b)
    b["w"] = b["w"].clone()
    b["w"][1, 2] += 1e-3
    assert state_digest(a) != state_digest(b)


def _crash_in(monkeypatch, target, name, when):
    """Make `target.name` raise OSError on the call where `when(*args)` is true."""
    original = getattr(target, name)

    def crashing(*args, **kwargs):
        if when(*args):
            raise OSError("power lost")
        return original(*args, **kwargs)
    monkeypatch.setattr(target, name, crashing)


# each point of a save: before any file, inside DCP's write, after the tensors but before the
# JSON, after the rename but before the pointer moved, and while pruning old checkpoints
CRASH_POINTS = {
    "before-tensors": lambda mp: _crash_in(mp, ckpt_mod.cs, "live_state", lambda *a: True),
    "inside-dcp-write": lambda mp: _crash_in(mp, torch_dcp, "save", lambda *a: True),
    "before-rename": lambda mp: _crash_in(mp, ckpt_mod.os, "replace",
                                          lambda src, dst: src.endswith(".tmp")),
    "before-pointer": lambda mp: _crash_in(mp, ckpt_mod, "_write_json_atomic",
                                           lambda path, data: path.endswith("latest")),
    "while-pruning": lambda mp: _crash_in(mp, ckpt_mod.shutil, "rmtree",
                                          lambda path, *a: path.endswith(".del")),
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_a_crash_at_any_point_of_a_save_keeps_a_loadable_checkpoint(tmp_path, monkeypatch,
                                                                    point, uninterrupted):
    folder = str(tmp_path / "ckpt")
    make_model().fit(*data(), batch_size=10, epochs=1, verbose=0, checkpoint_dir=folder,
                     keep_last=1)  # a good checkpoint at the end of epoch 1
    before = find_checkpoint(folder)
    CRASH_POINTS[point](monkeypatch)
    with pytest.raises(OSError, match="power lost"):
        make_model().fit(*data(), **FIT, checkpoint_dir=folder, keep_last=1)
    monkeypatch.undo()
    found = find_checkpoint(folder)
    assert found is not None and os.path.isfile(os.path.join(found, "meta.json"))
    assert found == before or point in ("before-pointer", "while-pruning")
    model = make_model(seed=1)
    model.fit(*data(), **FIT, checkpoint_dir=folder)  # resumes and finishes
    assert same(weights(model), uninterrupted)


def test_a_resumed_epoch_counts_only_the_samples_this_fit_trained():
    """The throughput of a resumed fit: the batches the checkpoint had trained are not its
    own (a resumed run read twice the samples/s of an uninterrupted one at the same step
    time)."""
    from bigtrain.engine.loop import _epoch_samples
    from bigtrain.engine.task import FitConfig
    cfg = FitConfig(epochs=2, batch_size=10)
    assert _epoch_samples(1, cfg, 55) == 55
    assert _epoch_samples(1, cfg, 55, skipped=2) == 35  # batches 2..5, the last one of 5
    assert _epoch_samples(1, cfg, 55, skipped=6) == 0
    steps = FitConfig(epochs=2, batch_size=10, steps_per_epoch=3)
    assert _epoch_samples(0, steps, None, skipped=1) == 20  # a stream: its nominal steps


def test_a_resumed_fit_keeps_the_csv_log_of_the_epochs_before_it(tmp_path):
    """CSVLogger without append= overwrote its file on a resume: the log of the epochs the
    checkpoint held was lost."""
    import csv

    from bigtrain.callbacks import CSVLogger
    folder, log = str(tmp_path / "ckpt"), str(tmp_path / "log.csv")
    fit = dict(FIT, epochs=4)
    with pytest.raises(Interrupt):
        make_model().fit(*data(), **fit, checkpoint_dir=folder, checkpoint_every=2,
                         callbacks=[CSVLogger(log), StopAt(2, 3)])
    epochs = lambda: [int(r["epoch"]) for r in csv.DictReader(open(log))]  # noqa: E731
    assert epochs() == [0, 1]
    make_model().fit(*data(), **fit, checkpoint_dir=folder, callbacks=[CSVLogger(log)])
    assert epochs() == [0, 1, 2, 3]
    make_model().fit(*data(), **fit, callbacks=[CSVLogger(log)])  # no resume: a new log
    assert epochs() == [0, 1, 2, 3] and len(open(log).read().splitlines()) == 5
    make_model().fit(*data(), **dict(fit, epochs=1), callbacks=[CSVLogger(log)])
    assert epochs() == [0]


def test_a_changed_byte_in_the_optimizer_state_is_found(tmp_path):
    """The model's checksum does not cover the optimizer's moments: a damaged byte there
    resumed without a word (a loss of 28 instead of 0.008)."""
    from bigtrain.engine.checkpoint import find_checkpoint
    interrupted_run(str(tmp_path / "ckpt"), checkpoint_every=1)
    newest = find_checkpoint(str(tmp_path / "ckpt"))
    (tensors,) = [n for n in os.listdir(newest) if n.endswith(".distcp")]
    path = os.path.join(newest, tensors)
    blob = bytearray(open(path, "rb").read())
    blob[-len(blob) // 4] ^= 0xFF  # in the last quarter: optimizer state follows the model's
    open(path, "wb").write(bytes(blob))
    with pytest.raises(CheckpointError, match=f"damaged(.|\n)*{tensors}(.|\n)*Delete"):
        make_model().fit(*data(), **FIT, checkpoint_dir=str(tmp_path / "ckpt"))


def test_a_mid_epoch_resume_logs_the_whole_epoch():
    """The resumed epoch's loss averaged only the batches after the checkpoint (1.2998
    against 1.3251 in one run), and EarlyStopping or ReduceLROnPlateau read that."""
    import tempfile
    whole = make_model().fit(*data(), **FIT).history["loss"]
    with tempfile.TemporaryDirectory() as folder:
        interrupted_run(folder, checkpoint_every=2)  # step 8 saved: epoch 1, batch 2
        resumed = make_model(seed=1).fit(*data(), **FIT, checkpoint_dir=folder)
    assert resumed.epoch == [1]
    assert resumed.history["loss"][0] == pytest.approx(whole[1], rel=1e-6)
