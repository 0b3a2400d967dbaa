"""Memory-mapped arrays given to fit(devices=N), and arrays the launcher spills to files for
being large, reach the ranks as their file (path, offset, shape), not their bytes: pickle
copied a memmap whole, so the payload held all the data and every rank a private copy.
Views (validation_split's halves) reopen at their own offset; strided and copy-on-write
ones are still copied. A 2-rank fit on memmap views matches one process."""
import io
import pickle

import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.engine.data import ArrayData
from bigtrain.launch import launcher
from bigtrain.layers import Dense, Input
from bigtrain.models import Model


def _travel(obj):
    """(payload bytes, the object as a launched rank unpickles it)."""
    buf = io.BytesIO()
    launcher._Pickler(buf).dump(obj)
    return len(buf.getvalue()), pickle.loads(buf.getvalue())


@pytest.fixture
def stored(tmp_path):
    x = np.arange(3000 * 50, dtype=np.float32).reshape(3000, 50)  # 600 kB
    np.save(tmp_path / "x.npy", x)
    return x, tmp_path / "x.npy"


def test_a_memmap_and_its_views_travel_as_their_file(stored):
    x, path = stored
    mapped = np.load(path, mmap_mode="r")
    for view, rows in [(mapped, slice(None)), (mapped[2100:], slice(2100, None)),
                       (mapped[5:7], slice(5, 7))]:
        size, back = _travel(view)
        assert size < 2000, size
        assert isinstance(back, np.memmap) and np.array_equal(back, x[rows])
    size, back = _travel(mapped[:, :3])  # strided: copied, as before
    assert np.array_equal(back, x[:, :3]) and size > 3000 * 3 * 4
    size, back = _travel(np.load(path, mmap_mode="c"))  # copy-on-write: the file may differ
    assert size > x.nbytes


def test_spilled_arrays_stay_out_of_the_payload(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "SPILL_BYTES", 10_000)
    x = torch.arange(2000 * 20, dtype=torch.float32).reshape(2000, 20)

    class Task:
        train, val = ArrayData([x], [torch.zeros(2000)]), None
    task = Task()
    launcher._spill_task_data(task, str(tmp_path))
    size, back = _travel(task.train)
    assert size < 20_000, size  # x alone is 160 kB
    assert torch.equal(torch.from_numpy(np.asarray(back.xs[0])), x)


def _fit(x, y, **kw):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(50,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", learning_rate=1e-6)
    history = model.fit(x, y, epochs=1, batch_size=256, validation_split=0.25, verbose=0, **kw)
    return model.get_weights(), history.history


@pytest.mark.slow
def test_memmap_views_on_two_ranks_match_one_process(stored):
    x, path = stored
    y = np.arange(3000) % 3
    mapped = np.load(path, mmap_mode="r")
    (w1, h1), (w2, h2) = _fit(x, y), _fit(mapped, y, strategy="ddp", devices=2, timeout=60)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-5)
