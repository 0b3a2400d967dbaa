"""ModelCheckpoint(save_best_only=True) in a fit that resumes from its checkpoint_dir after a
crash (a restarted job builds its callbacks anew): its best value starts from the epochs the
checkpoint trained, so the first epoch after the crash no longer overwrites the best file
with a worse model (it did: best started at inf/-inf)."""
from __future__ import annotations

import pytest

from bigtrain.callbacks import ModelCheckpoint
from bigtrain.models import load_model
from tests.engine.test_checkpoint import (FIT, Interrupt, StopAt, data, make_model, same,
                                          weights)

# mode="max" on the training loss: "best" is the first epoch (the loss falls), so any
# later epoch is worse and must leave the file alone
BEST = dict(monitor="loss", mode="max", save_best_only=True)


def test_a_resumed_fit_keeps_the_best_file_of_the_epochs_before_the_crash(tmp_path):
    first = make_model()
    first.fit(*data(), **{**FIT, "epochs": 1})
    best, folder = str(tmp_path / "best.bigtrain"), str(tmp_path / "ckpt")
    with pytest.raises(Interrupt):  # epoch 1 saved the best file, epoch 2 never ends
        make_model().fit(*data(), **FIT, checkpoint_dir=folder,
                         callbacks=[ModelCheckpoint(best, **BEST), StopAt(1, 2)])
    assert same(weights(load_model(best)), weights(first))
    resumed, again = make_model(seed=1), ModelCheckpoint(best, **BEST)
    history = resumed.fit(*data(), **FIT, checkpoint_dir=folder, callbacks=[again])
    assert history.epoch == [1] and not same(weights(resumed), weights(first))
    assert same(weights(load_model(best)), weights(first))  # epoch 2 was worse: not saved
    assert again.best > history.history["loss"][0]


def test_an_improvement_after_the_resume_is_saved(tmp_path):
    best, folder = str(tmp_path / "best.bigtrain"), str(tmp_path / "ckpt")
    with pytest.raises(Interrupt):
        make_model().fit(*data(), **FIT, checkpoint_dir=folder, callbacks=[
            ModelCheckpoint(best, monitor="loss", save_best_only=True), StopAt(1, 2)])
    resumed = make_model(seed=1)
    resumed.fit(*data(), **FIT, checkpoint_dir=folder,
                callbacks=[ModelCheckpoint(best, monitor="loss", save_best_only=True)])
    assert same(weights(load_model(best)), weights(resumed))  # the loss fell: saved
