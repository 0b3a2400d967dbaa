"""Background loading of map-style Datasets: `fit(workers=N, prefetch=K)` and a DataLoader's
own num_workers/prefetch_factor/collate_fn. Worker processes collate exactly the index
slices the step would read, so weights match loading in the training process bit for bit,
on one rank and on two."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

import bigtrain
from bigtrain.api.inputs import loading_of
from tests.api.conftest import seed_like_model, teacher_data


class Recorded(Dataset):
    """Plain (x, y) items read on demand."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), torch.from_numpy(self.y[i])


class PidCollate:
    """A custom collate_fn that also notes which processes ran it (in a shared folder)."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, items):
        open(os.path.join(self.folder, str(os.getpid())), "w").close()
        return default_collate(items)


def _fit(source, **kw):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = seed_like_model()
    model.fit(source, epochs=2, batch_size=32, verbose=0, **kw)
    return model.get_weights()


def _max_diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


def test_workers_load_in_other_processes_and_train_identically(tmp_path):
    x, y, _ = teacher_data(n=200)
    plain = _fit(Recorded(x, y))
    # shuffle=True: the loader's order rules, and a RandomSampler is fit's seeded order
    loader = DataLoader(Recorded(x, y), batch_size=32, shuffle=True, num_workers=2,
                        collate_fn=PidCollate(str(tmp_path)))
    background = _fit(loader)
    pids = {int(p) for p in os.listdir(tmp_path)}
    assert pids and os.getpid() not in pids  # collated in worker processes only
    assert _max_diff(plain, background) == 0.0
    assert _max_diff(plain, _fit(Recorded(x, y), workers=1, prefetch=3)) == 0.0
    assert _max_diff(plain, _fit(Recorded(x[::-1].copy(), y[::-1].copy()))) > 1e-4


def test_dataloader_settings_are_honoured_and_fit_overrides_them():
    ds = Recorded(*teacher_data(n=8)[:2])
    loader = DataLoader(ds, batch_size=4, num_workers=3, prefetch_factor=5, pin_memory=True)
    got = loading_of(loader, {"workers": None, "prefetch": None})
    assert (got.workers, got.prefetch, got.pin_memory, got.collate) == (3, 5, True, None)
    assert loading_of(loader, {"workers": 1, "prefetch": None}).workers == 1
    assert loading_of(ds, {"workers": 2, "prefetch": 4}).prefetch == 4


@pytest.mark.parametrize("kw, word", [({"workers": -1}, "workers"), ({"prefetch": 0}, "prefetch"),
                                      ({"workers": 1.5}, "workers")])
def test_bad_loading_settings_are_refused(kw, word):
    x, y, _ = teacher_data(n=16)
    with pytest.raises(ValueError, match=word):
        _fit(Recorded(x, y), **kw)


@pytest.mark.slow
def test_workers_under_ddp_match_one_process():
    x, y, _ = teacher_data(n=100)  # uneven: the last global batch of 4 splits 2 + 2
    ref = _fit(Recorded(x, y))
    got = _fit(Recorded(x, y), workers=1, strategy="ddp", devices=2, timeout=60)
    assert _max_diff(ref, got) <= 1e-5


def test_background_batches_equal_in_process_ones_with_an_empty_share():
    from bigtrain.engine.data import DatasetData, Loading
    from bigtrain.engine.feed import EpochPlan, feed_epoch
    x, y, _ = teacher_data(n=33)  # the last global batch of 32 + 1: rank 1's share is empty
    plan = EpochPlan(0, 32, None, 0, True, (1, 2), 2, 2, 0, torch.device("cpu"))
    feeds = [feed_epoch(DatasetData(Recorded(x, y), Loading(workers=w)), plan) for w in (0, 1)]
    steps = [[f.next() for _ in f.step_numbers(0)] for f in feeds]
    assert [n for n, _ in steps[0]] == [n for n, _ in steps[1]] == [32, 1]
    for (_, a), (_, b) in zip(*steps):
        assert a.weights == b.weights
        for (xa, ya, _), (xb, yb, _) in zip(a.micro, b.micro):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert steps[1][1][1].micro[0][0].shape == (0, 20)  # zero rows, the item's shape
