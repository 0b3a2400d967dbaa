"""A save that replaces a checkpoint of the same step (a run started with resume='never' where
another run had saved that step last) renames the old step-N to step-N.del, then step-N.tmp
to step-N. Cut short between the two renames, it left `latest` naming a missing folder; the
next fit first deleted both the .tmp and the .del folder, then refused to resume ("checkpoint
folder .../step-00000006 does not exist"). The next fit now puts the whole folder back
under its name first: the new checkpoint, else the old one, else it resumes from the newest
complete checkpoint with a warning; find_checkpoint finds the same without renaming."""
from __future__ import annotations

import os
import shutil

import pytest

from bigtrain.engine.checkpoint import CheckpointError, export_safetensors, find_checkpoint
from tests.engine.test_checkpoint import (FIT, STEPS, CountBatches, data, make_model, same,
                                          weights)

STEP6 = "step-00000006"


@pytest.fixture(scope="module")
def reference():
    """Weights of uninterrupted two-epoch runs from seeds 0 and 1, and seed 0's after one."""
    out = {}
    for seed, epochs in ((0, 2), (1, 2), (0, 1)):
        model = make_model(seed=seed)
        model.fit(*data(), **{**FIT, "epochs": epochs})
        out[seed, epochs] = weights(model)
    return out


def other_run(folder: str, **kw) -> None:
    """Another run (seed 1) that did one epoch: it saved step 6 last."""
    make_model(seed=1).fit(*data(), **{**FIT, "epochs": 1}, checkpoint_dir=folder, **kw)


def resume(folder: str, trained: int | None, **kw) -> dict:
    """Resume with fresh weights, check `trained` batches were left; the final weights."""
    model, counter = make_model(seed=2), CountBatches()
    model.fit(*data(), **FIT, checkpoint_dir=folder, callbacks=[counter], **kw)
    assert trained is None or counter.count == trained
    assert not any(n.endswith((".tmp", ".del")) for n in os.listdir(folder))
    return weights(model)


def test_a_save_cut_between_its_two_renames_resumes_the_new_checkpoint(tmp_path, monkeypatch,
                                                                       reference):
    folder = str(tmp_path / "ckpt")
    other_run(folder)
    original = os.replace

    def power_lost_between_renames(src, dst):
        if src.endswith(".tmp") and os.path.isdir(dst + ".del"):
            raise OSError("power lost")  # the old step-6 is step-6.del, the new one not yet in
        return original(src, dst)
    monkeypatch.setattr(os, "replace", power_lost_between_renames)
    with pytest.raises(OSError, match="power lost"):  # this run (seed 0) saves step 6 over it
        make_model().fit(*data(), **FIT, checkpoint_dir=folder, resume="never")
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == ["latest", STEP6 + ".del", STEP6 + ".tmp"]
    # read-only: the new checkpoint where it lies, nothing renamed
    assert find_checkpoint(folder) == os.path.join(folder, STEP6 + ".tmp")
    exported = str(tmp_path / "w.safetensors")
    export_safetensors(folder, exported)
    check = make_model(seed=2)
    check.load_weights(exported)
    assert same(weights(check), reference[0, 1])
    assert sorted(os.listdir(folder)) == ["latest", STEP6 + ".del", STEP6 + ".tmp"]
    assert same(resume(folder, STEPS), reference[0, 2])  # this run's step 6, not the other's


def test_without_a_whole_new_checkpoint_the_replaced_one_resumes(tmp_path, reference):
    folder = tmp_path / "ckpt"
    other_run(str(folder))
    os.replace(folder / STEP6, folder / (STEP6 + ".del"))  # the state a cut leaves, with a
    (folder / (STEP6 + ".tmp")).mkdir()                     # new save that had not finished
    (folder / (STEP6 + ".tmp") / ".metadata").write_bytes(b"")
    assert find_checkpoint(str(folder)) == str(folder / (STEP6 + ".del"))
    assert same(resume(str(folder), STEPS), reference[1, 2])  # the other run, continued


def test_with_neither_folder_whole_the_newest_complete_checkpoint_resumes(tmp_path, reference):
    folder = tmp_path / "ckpt"
    other_run(str(folder), checkpoint_every=3, keep_last=5)  # steps 3 and 6
    os.replace(folder / STEP6, folder / (STEP6 + ".del"))
    (folder / (STEP6 + ".del") / "meta.json").unlink()  # its deletion had begun
    with pytest.warns(UserWarning, match="cut short.*using step-00000003"):
        assert find_checkpoint(str(folder)) == str(folder / "step-00000003")
    with pytest.warns(UserWarning, match="cut short.*using step-00000003"):
        assert same(resume(str(folder), 2 * STEPS - 3, checkpoint_every=3),
                    reference[1, 2])


def test_a_deleted_folder_the_pointer_names_still_fails_clearly(tmp_path):
    """No .tmp or .del beside it: not a cut save but a damaged folder; no silent fallback."""
    folder = tmp_path / "ckpt"
    other_run(str(folder), checkpoint_every=3, keep_last=5)
    shutil.rmtree(folder / STEP6)
    with pytest.raises(CheckpointError, match=f"{STEP6} does not exist.*resume='never'"):
        make_model().fit(*data(), **FIT, checkpoint_dir=str(folder))


def test_several_ranks_resume_the_new_checkpoint(tmp_path):
    """Rank 0 puts the folder back before any rank looks for the checkpoint."""
    kw = dict(strategy="ddp", devices=2, watchdog_timeout=20)
    folder, new = tmp_path / "ckpt", tmp_path / "new"
    other_run(str(folder))
    make_model().fit(*data(), **{**FIT, "epochs": 1}, checkpoint_dir=str(new))
    os.replace(folder / STEP6, folder / (STEP6 + ".del"))
    shutil.copytree(new / STEP6, folder / (STEP6 + ".tmp"))  # whole, never renamed in
    model = make_model(seed=2)
    model.fit(*data(), **FIT, checkpoint_dir=str(new), **kw)  # the same checkpoint, intact
    assert same(resume(str(folder), None, **kw), weights(model))
