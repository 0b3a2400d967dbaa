"""Files renamed into place without fsync: after a power loss the rename can survive without
the data it names, an empty or short file under the final name (a checkpoint that looks
complete, a model file that replaced a good one). Every file of a checkpoint is now fsynced
before its folder is renamed into place (DCP's tensor files by DCP's own sync_files), the
folders after their renames, and the `latest` pointer and the files Model.save_weights and
export_safetensors write likewise. Recorded by watching os.fsync and os.replace: no timing."""
from __future__ import annotations

import os

import pytest

from bigtrain.engine.checkpoint import export_safetensors
from tests.engine.test_checkpoint import FIT, data, make_model, same, weights

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="names an fsynced descriptor through /proc")


@pytest.fixture()
def events(monkeypatch):
    """[("fsync", path) or ("replace", src, dst)] in the order they happened (os.rename, as
    DCP renames its .metadata, logs as a replace)."""
    log, fsync = [], os.fsync

    def logged_fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def logged(rename):
        def renamed(src, dst, *args, **kwargs):
            log.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
            return rename(src, dst, *args, **kwargs)
        return renamed
    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged(os.replace))
    monkeypatch.setattr(os, "rename", logged(os.rename))
    return log


def first(log: list, *event) -> int:
    return log.index(tuple(event))


def synced_before(log: list, path: str, end: int) -> bool:
    """Whether `path` was fsynced before event `end`, itself or as a temporary file renamed
    to it later (meta.json.tmp-<pid>, DCP's .metadata.tmp)."""
    renamed = {e[1] for e in log if e[0] == "replace" and e[2] == path}
    return any(e[0] == "fsync" and (e[1] == path or e[1] in renamed) for e in log[:end])


def test_every_checkpoint_file_and_folder_is_synced_before_it_is_published(tmp_path, events):
    folder = os.path.realpath(tmp_path / "ckpt")
    make_model().fit(*data(), **{**FIT, "epochs": 1}, checkpoint_dir=folder)
    final = os.path.join(folder, "step-00000006")
    publish = first(events, "replace", final + ".tmp", final)
    names = os.listdir(final)
    assert {".metadata", "meta.json", "rng-rank00000.json"} <= set(names)
    assert any(n.endswith(".distcp") for n in names)
    for name in names:  # each file while it lay in the .tmp folder
        assert synced_before(events, os.path.join(final + ".tmp", name), publish), name
    assert ("fsync", final + ".tmp") in events[:publish]  # the names in it
    pointer = os.path.join(folder, "latest")
    moved = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == pointer)
    assert ("fsync", folder) in events[publish:moved]  # the rename, before the pointer names it
    assert synced_before(events, pointer, moved) and ("fsync", folder) in events[moved:]


def test_model_files_are_synced_before_they_replace_the_previous_one(tmp_path, events):
    model = make_model()
    folder = os.path.realpath(tmp_path)
    for path, save in ((os.path.join(folder, "w.safetensors"), model.save_weights),
                       (os.path.join(folder, "m.bigtrain"), model.save),
                       (os.path.join(folder, "e.safetensors"), None)):
        events.clear()
        if save is None:
            model.fit(*data(), **{**FIT, "epochs": 1}, checkpoint_dir=str(tmp_path / "c"))
            events.clear()
            export_safetensors(str(tmp_path / "c"), path)
        else:
            save(path)
        moved = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == path)
        assert synced_before(events, path, moved), path
        assert ("fsync", folder) in events[moved:], path


def test_an_interrupted_save_weights_keeps_the_previous_file(tmp_path, monkeypatch):
    """The file is written under a temporary name and renamed: a save cut short (here in the
    middle of writing, by Ctrl-C) leaves the previous file whole and no temporary file."""
    from bigtrain.api import files
    path = str(tmp_path / "w.safetensors")
    model = make_model()
    model.save_weights(path)
    saved = weights(model)
    model.fit(*data(), **FIT)
    original = files.save_file

    def interrupted(tensors, tmp, metadata=None):
        original(tensors, tmp, metadata=metadata)
        with open(tmp, "r+b") as f:
            f.truncate(100)  # half written
        raise KeyboardInterrupt
    monkeypatch.setattr(files, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save_weights(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["w.safetensors"]
    again = make_model(seed=1)
    again.load_weights(path)
    assert same(weights(again), saved)
