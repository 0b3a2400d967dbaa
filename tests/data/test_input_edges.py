"""Edges of fit's data: a DataLoader's sampler, drop_last and shuffle decide what trains (as
Keras iterates the loader); inputs of any numeric dtype are cast to the model Input's dtype
from arrays, memmaps, Datasets, streams and files alike; files keep a list column's width on
a rank that owns no row group of a block, and give a scalar column as (n, 1)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import (BatchSampler, DataLoader, Dataset, Sampler, TensorDataset,
                              WeightedRandomSampler)

import bigtrain
from bigtrain.data import files
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from tests.api.conftest import fresh_seed_model, teacher_data

X, _, IDS = teacher_data(n=100)


def _model(features=20):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    if features == 20:
        return fresh_seed_model()
    inp = Input(shape=(features,))
    model = Model(inputs=inp, outputs=Dense(4, activation="softmax")(inp))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", learning_rate=0.01)
    return model


def _fit(x, y=None, features=20, **kw):
    model = _model(features)
    model.fit(x, y, epochs=2, verbose=0, **{"batch_size": 16, **kw})
    return model.get_weights()


def _diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


class Recorded(Dataset):
    """(x, y) items; records which were read."""

    def __init__(self, x=X, y=IDS):
        self.x, self.y, self.seen = torch.from_numpy(x), torch.from_numpy(y), []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.x[i], self.y[i]


class Fixed(Sampler):
    """A sampler of fixed indices, repeats allowed."""

    def __init__(self, ids):
        self.ids = list(ids)

    def __iter__(self):
        return iter(self.ids)

    def __len__(self):
        return len(self.ids)


ORDER = [5, 3, 9, 9, 0, 41, 7, 7, 2, 60, 11, 13, 8, 1, 99, 4, 20, 21, 22, 23, 5]


def test_custom_sampler_trains_its_indices_in_its_order():
    got = _fit(DataLoader(Recorded(), batch_size=8, sampler=Fixed(ORDER)), batch_size=None)
    ref = _fit(X[ORDER], IDS[ORDER], batch_size=8, shuffle=False)
    assert _diff(got, ref) < 1e-6


def test_weighted_sampler_draws_only_what_it_weighs():
    data = Recorded()
    only = torch.tensor((IDS == 0).astype(float))
    model = _model()
    model.fit(DataLoader(data, batch_size=8, sampler=WeightedRandomSampler(only, 40)), epochs=1,
              verbose=0)
    assert len(data.seen) == 41  # item 0 read once to learn the layout, then 40 draws
    assert set(IDS[data.seen[1:]]) == {0}


def test_drop_last_and_the_loaders_order_rule_over_fits_shuffle():
    sequential = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(IDS)),
                            batch_size=16, drop_last=True)
    assert _diff(_fit(sequential), _fit(X[:96], IDS[:96], shuffle=False)) < 1e-6
    shuffled = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(IDS)),
                          batch_size=16, shuffle=True)
    got = _fit(shuffled, shuffle=False)  # the loader's RandomSampler: fit's seeded order
    assert _diff(got, _fit(X, IDS, shuffle=True)) < 1e-6
    assert _diff(got, _fit(X, IDS, shuffle=False)) > 1e-4
    batched = DataLoader(Recorded(), batch_sampler=BatchSampler(Fixed(range(100)), 16, True))
    assert _diff(_fit(batched), _fit(X[:96], IDS[:96], shuffle=False)) < 1e-6


def test_custom_batch_sampler_is_read_batch_by_batch_on_one_process():
    lists = [[0, 1, 2], [10, 11, 12, 13, 14], [7], [50, 51]]
    got = _fit(DataLoader(Recorded(), batch_sampler=lists))
    model = _model()
    for _ in range(2):
        for ids in lists:
            model.train_on_batch(X[ids], IDS[ids])
    assert _diff(got, model.get_weights()) < 1e-6
    # raised in the ranks, as soon as they read the loader
    with pytest.raises((ValueError, RuntimeError), match="custom batch_sampler"):
        _fit(DataLoader(Recorded(), batch_sampler=lists), strategy="ddp", devices=2, timeout=60)


@pytest.mark.slow
def test_random_sampler_under_ddp_draws_like_one_process():
    weights = torch.linspace(0.1, 1.0, 100)
    loader = DataLoader(Recorded(), batch_size=16, sampler=WeightedRandomSampler(weights, 70))
    one = _fit(loader)
    assert _diff(one, _fit(loader, strategy="ddp", devices=2, timeout=60)) < 1e-5


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "uint8"])
def test_inputs_of_any_numeric_dtype_train_as_float32(dtype, tmp_path):
    xi = np.round(X * 3).clip(0, 9).astype(dtype)
    ref = _fit(xi.astype(np.float32), IDS, shuffle=False)
    assert _diff(_fit(xi, IDS, shuffle=False), ref) < 1e-6
    np.save(tmp_path / "x.npy", xi)
    memmap = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert _diff(_fit(memmap, IDS, shuffle=False), ref) < 1e-6
    dataset = TensorDataset(torch.from_numpy(xi), torch.from_numpy(IDS))
    assert _diff(_fit(dataset, shuffle=False), ref) < 1e-6
    batches = ((xi[i:i + 16], IDS[i:i + 16]) for i in range(0, 100, 16))  # a generator
    assert _diff(_fit_once(batches), _fit_once_arrays(xi.astype(np.float32))) < 1e-6


def _fit_once(source):
    model = _model()
    model.fit(source, epochs=1, verbose=0)
    return model.get_weights()


def _fit_once_arrays(x):
    model = _model()
    model.fit(x, IDS, epochs=1, batch_size=16, shuffle=False, verbose=0)
    return model.get_weights()


def test_input_dtype_declared_integer_stays_integer_and_torch_modules_keep_theirs():
    from bigtrain.engine.data import InputSpec, fit_inputs
    ids = InputSpec("ids", torch.int64, (3,))
    assert ids.fit(torch.tensor([[1.0, 2.0, 3.0]])).dtype == torch.int64
    assert fit_inputs(torch.ones(2, 3, dtype=torch.int64), None).dtype == torch.int64
    assert fit_inputs(torch.ones(2, 3, dtype=torch.float64), None).dtype == torch.float32
    with pytest.raises(ValueError, match=r"expects samples of shape \(3,\)"):
        ids.fit(torch.ones(2, 4))


def _write(folder, rows_per_file=50):
    for k in range(2):  # one row group per file; buffer_rows=50: each file its own block
        part = slice(k * rows_per_file, (k + 1) * rows_per_file)
        flat = pa.array(X[part].reshape(-1))
        pq.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(flat, 20),
                                 "f0": X[part, 0], "xi": np.round(X[part] * 3)[:, 0]
                                 .astype(np.int64), "label": IDS[part]}),
                       folder / f"part{k}.parquet")


def test_files_list_column_on_a_rank_without_row_groups(tmp_path):
    _write(tmp_path)
    source = files(str(tmp_path / "*.parquet"), x="x", y="label", buffer_rows=50)
    assert source.read_units([])["x"].shape == (0, 20)  # what a rank owning none reads
    assert _diff(_fit(source), _fit(X, IDS, shuffle=False)) > 0  # shuffled, trains


@pytest.mark.slow
def test_files_list_column_under_ddp_matches_one_process(tmp_path):
    _write(tmp_path)
    source = files(str(tmp_path / "*.parquet"), x="x", y="label", buffer_rows=50)
    one = _fit(source)
    assert _diff(one, _fit(source, strategy="ddp", devices=2, timeout=60)) < 1e-5


def test_files_scalar_and_integer_columns_and_a_wrong_width(tmp_path):
    _write(tmp_path)
    pattern = str(tmp_path / "*.parquet")
    got = _fit(files(pattern, x="f0", y="label"), features=1, shuffle=False)
    assert _diff(got, _fit(X[:, :1], IDS, features=1, shuffle=False)) < 1e-6
    ints = np.round(X * 3)[:, :1].astype(np.float32)
    got = _fit(files(pattern, x="xi", y="label"), features=1, shuffle=False)
    assert _diff(got, _fit(ints, IDS, features=1, shuffle=False)) < 1e-6
    with pytest.raises(ValueError, match=r"expects samples of shape \(20,\).*x='f0'.*\(1,\)"):
        _fit(files(pattern, x="f0", y="label"))
