"""Which checkpoints a folder keeps and resumes, and a folder fit cannot write into.

A run started afresh (resume='never') in a checkpoint_dir where a longer run had saved
larger steps: keep_last deleted the new run's own checkpoints (they sorted before the old
run's by step) and left `latest` naming a deleted folder, so the next resume='auto' failed;
checkpoints are now ordered by when they were saved. A checkpoint_dir no process can write
into failed at the first save, after an epoch of training; it now fails before the first
batch, on every rank."""
from __future__ import annotations

import json
import os

import pytest

from bigtrain.engine.checkpoint import CheckpointError, find_checkpoint
from tests.engine.test_checkpoint import (EPOCHS, FIT, STEPS, CountBatches, Interrupt, StopAt,
                                          data, make_model, same, weights)


@pytest.fixture(scope="module")
def uninterrupted():
    model = make_model()
    model.fit(*data(), **FIT)
    return weights(model)


def test_a_fresh_run_keeps_and_resumes_its_own_checkpoints(tmp_path, uninterrupted):
    folder = str(tmp_path / "ckpt")
    old = make_model(seed=1)  # another run, finished: its last checkpoint is step 12
    old.fit(*data(), **FIT, checkpoint_dir=folder, checkpoint_every=1, keep_last=1)
    assert not same(weights(old), uninterrupted)
    with pytest.raises(Interrupt):  # a new run, stopped before step 9 (step 8 saved)
        make_model().fit(*data(), **FIT, checkpoint_dir=folder, checkpoint_every=1, keep_last=1,
                         resume="never", callbacks=[StopAt(1, 2)])
    pointer = json.loads(open(os.path.join(folder, "latest")).read())
    assert pointer["step"] == 8 and os.path.isdir(os.path.join(folder, pointer["path"]))
    assert find_checkpoint(folder) == os.path.join(folder, "step-00000008")
    model, counter = make_model(seed=2), CountBatches()
    model.fit(*data(), **FIT, checkpoint_dir=folder, checkpoint_every=1, keep_last=1,
              callbacks=[counter])  # resume='auto': the new run's step 8, not the old run's 12
    assert counter.count == EPOCHS * STEPS - 8
    assert same(weights(model), uninterrupted)
    assert sorted(os.listdir(folder)) == ["latest", "step-00000012"]  # the new run's 12


def test_a_run_resumed_from_an_older_checkpoint_continues_from_its_own(tmp_path,
                                                                       uninterrupted):
    folder = tmp_path / "ckpt"
    make_model(seed=1).fit(*data(), **FIT, checkpoint_dir=str(folder), checkpoint_every=4,
                           keep_last=5)  # steps 4, 8, 12 of another run
    with pytest.raises(Interrupt):  # this run saves 2, 4 (over the old 4), 6, then stops
        make_model().fit(*data(), **FIT, checkpoint_dir=str(folder), checkpoint_every=2,
                         keep_last=5, resume="never", callbacks=[StopAt(1, 1)])
    assert find_checkpoint(str(folder)) == str(folder / "step-00000006")
    model = make_model(seed=2)
    model.fit(*data(), **FIT, checkpoint_dir=str(folder), checkpoint_every=2, keep_last=5)
    assert same(weights(model), uninterrupted)


def test_a_folder_that_cannot_be_written_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    counter = CountBatches()
    with pytest.raises(CheckpointError, match="cannot be written") as err:
        make_model().fit(*data(), **FIT, checkpoint_dir=str(blocker / "ckpt"),
                         callbacks=[counter])
    assert counter.count == 0 and str(blocker / "ckpt") in str(err.value)


def test_every_rank_fails_before_training_when_the_folder_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(Exception, match="cannot be written"):
        make_model().fit(*data(), **FIT, strategy="ddp", devices=2, watchdog_timeout=20,
                         checkpoint_dir=str(blocker / "ckpt"))
