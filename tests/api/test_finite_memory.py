"""fit reads its training arrays for NaN/Inf once: a second fit on the same unchanged array
skips the pass, and a NaN written in place in between is still named, after the loss check
stops the fit."""
import gc

import numpy as np
import pytest
import torch

from bigtrain.api import validation
from tests.api.conftest import seed_like_model, teacher_data

X, Y, _ = teacher_data(n=64)


@pytest.fixture
def scans(monkeypatch):
    """The names of the arrays scanned, in order."""
    seen = []
    real = validation._scan

    def counting(a, name, why=""):
        seen.append(name)
        return real(a, name, why)
    monkeypatch.setattr(validation, "_scan", counting)
    return seen


def test_a_second_fit_on_the_same_arrays_does_not_read_them_again(scans):
    x, y = X.copy(), Y.copy()
    model = seed_like_model()
    model.fit(x, y, epochs=1, verbose=0)
    assert scans == ["x", "y"]
    model.fit(x, y, epochs=1, verbose=0)
    assert scans == ["x", "y"]
    model.fit(x.copy(), y, epochs=1, verbose=0)  # a new array is read
    assert scans == ["x", "y", "x"]
    model.fit(x[:32], y[:32], epochs=1, verbose=0)  # so is a view of another layout
    assert scans == ["x", "y", "x", "x", "y"]


def test_without_the_loss_check_every_fit_reads_them(scans):
    x, y = X.copy(), Y.copy()
    model = seed_like_model()
    model.fit(x, y, verbose=0, terminate_on_nan=False)
    model.fit(x, y, verbose=0, terminate_on_nan=False)
    assert scans == ["x", "y", "x", "y"]


def test_evaluate_and_validation_data_are_always_read(scans):
    x, y = X.copy(), Y.copy()
    model = seed_like_model()
    model.fit(x, y, verbose=0)
    model.fit(x, y, verbose=0, validation_data=(x, y))
    model.evaluate(x, y)
    assert scans == ["x", "y", "validation x", "validation y", "x", "y"]


def test_a_tensor_written_in_place_is_read_again_before_training():
    x, y = torch.from_numpy(X.copy()), torch.from_numpy(Y.copy())
    model = seed_like_model()
    model.fit(x, y, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    x[5, 2] = float("nan")  # torch bumps the tensor's version
    with pytest.raises(ValueError, match=r"1 NaN/Inf.*\(5, 2\)") as err:
        model.fit(x, y, verbose=0)
    assert "changed in place" not in str(err.value)  # refused before training
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_numpy_array_written_in_place_is_named_after_the_loss_check_stops(capsys):
    x, y = X.copy(), Y.copy()
    model = seed_like_model()
    model.fit(x, y, verbose=0)
    x[:, 1] = np.nan  # numpy keeps no version: the scan is skipped, the loss goes NaN
    y[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"x contains 64 NaN/Inf.*\(0, 1\).*changed in place"):
        model.fit(x, y, epochs=3, verbose=0)
    assert "TerminateOnNaN" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"x contains 64 NaN/Inf"):  # and before the next one
        seed_like_model().fit(x, y, verbose=0)
    x[:, 1] = 0.0
    with pytest.raises(ValueError, match=r"y contains 1 NaN/Inf.*\(3, 0\)"):  # y forgotten too
        seed_like_model().fit(x, y, verbose=0)


def test_the_history_says_why_the_fit_stopped(scans):
    from bigtrain.callbacks import EarlyStopping
    x, y = X.copy(), Y.copy()
    model = seed_like_model()
    assert model.fit(x, y, verbose=0).stop_reason is None
    stopped = model.fit(x, y, epochs=8, verbose=0, callbacks=[
        EarlyStopping(monitor="loss", min_delta=10.0, patience=0)])
    assert len(stopped.epoch) < 8 and stopped.stop_reason is None
    assert scans == ["x", "y"]  # an early stop that is not a NaN loss reads nothing again


def test_a_validation_share_is_read_every_time(scans):
    x, y = X.copy(), Y.copy()
    model = seed_like_model()
    model.fit(x, y, verbose=0, validation_split=0.25)
    x[-1, 0] = np.nan  # in the validation rows: it never reaches the training loss
    with pytest.raises(ValueError, match=r"1 NaN/Inf.*\(63, 0\)"):
        model.fit(x, y, verbose=0, validation_split=0.25)


def test_an_inference_tensor_is_read_every_time(scans):
    with torch.inference_mode():
        x = torch.from_numpy(X.copy()) * 1.0
    model = seed_like_model()
    model.fit(x, Y, verbose=0)
    model.fit(x, Y, verbose=0)
    assert scans == ["x", "y", "x"]  # no version counter to trust


def test_a_freed_array_is_forgotten():
    x = X.copy()
    seed_like_model().fit(x, Y, verbose=0)
    key = id(x)
    assert key in validation._FOUND_FINITE
    del x
    gc.collect()
    assert key not in validation._FOUND_FINITE


def test_float_class_ids_written_in_place_name_the_nan():
    """Float class ids under sparse cross-entropy: a NaN written into them since the last
    fit reaches the label checks first, which name it rather than 'non-integer values'."""
    x, ids = X.copy(), teacher_data(n=64)[2].astype(np.float32)
    model = seed_like_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, ids, verbose=0)
    ids[3] = np.nan
    with pytest.raises(ValueError, match=r"integer class ids .* got a NaN or Inf at row 3"):
        model.fit(x, ids, verbose=0)
    ids[3] = 0.5
    with pytest.raises(ValueError, match="got non-integer values"):
        model.fit(x, ids, verbose=0)
