"""bigtrain.data.files on what real tables hold: text and category columns, missing values,
lists of unequal lengths and files rewritten after `files(...)` read them are refused with
the column, file and fix named (they had failed inside torch mid-fit, or trained on NaN,
-2**63 or rows whose values a flat reshape had moved); on 2 ranks, files of unequal sizes,
an empty file and fewer files than ranks still give every row exactly once per epoch, and a
missing value only rank 1 reads stops the run with its name."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.datasets import load_iris

import bigtrain
from bigtrain.data import files
from bigtrain.data.streams import Window
from bigtrain.layers import Dense, Flatten, Input
from bigtrain.models import Model
from tests.dist import run_ranks

X, Y = load_iris(return_X_y=True)  # 150 rows, 4 float features, 3 classes
FEATURES = ["a", "b", "c", "d"]


def _frame(rows=slice(None)):
    df = pd.DataFrame(X[rows], columns=FEATURES)
    df["label"] = Y[rows]
    df["id"] = np.arange(len(X))[rows]
    return df


def _model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _read_all(source, rank=0, ranks=1, batch_size=32):
    window = Window(0, 0, None, batch_size, rows=lambda n: (0, n), shard=(rank, ranks))
    return [cols for _, cols in source.batches(window)]


def test_text_and_category_columns_are_refused_before_training(tmp_path):
    df = _frame()
    df["species"] = np.array(["setosa", "versicolor", "virginica"])[Y]
    df["kind"] = pd.Categorical(df["species"])
    df["when"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(df["id"], unit="D")
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "iris.parquet")
    pattern = str(tmp_path / "*.parquet")
    for kw in (dict(x=FEATURES, y="species"), dict(x=[*FEATURES[:3], "kind"], y="label"),
               dict(x=FEATURES, y="label", sample_weight="when")):
        column = kw.get("sample_weight") or (kw["y"] if kw["y"] != "label" else "kind")
        with pytest.raises(ValueError, match=rf"column '{column}' of .*iris.parquet.*"
                                             r"Encode it first"):
            files(pattern, **kw)
    with pytest.raises(ValueError, match="y must be one column name"):
        files(pattern, x=FEATURES, y=["label", "id"])
    df.to_csv(tmp_path / "iris.csv.gz", index=False)
    with pytest.raises(ValueError, match=r"iris.csv.gz.*CSV, also gzipped, is not read"):
        files(str(tmp_path / "iris.*"), x=FEATURES, y="label")
    numeric = files(pattern, x=FEATURES, y="label")  # the numeric columns still read
    assert sum(len(x) for x, _, _ in _read_all(numeric)) == len(X)


def test_missing_values_are_refused_naming_file_row_group_and_column(tmp_path):
    df = _frame()
    df.loc[120, "c"] = np.nan  # row group 1 of 2 (row groups of 100 rows)
    table = pa.Table.from_pandas(df, preserve_index=False)
    (tmp_path / "stats").mkdir()
    pq.write_table(table, tmp_path / "stats" / "p.parquet", row_group_size=100)
    with pytest.raises(ValueError, match=r"column 'c' has 1 null .*row group 1 of .*p.parquet"):
        files(str(tmp_path / "stats" / "*.parquet"), x=FEATURES, y="label")
    # no statistics to read up front (Parquet without them, Feather): refused as it is read
    (tmp_path / "plain").mkdir()
    pq.write_table(table, tmp_path / "plain" / "p.parquet", row_group_size=100,
                   write_statistics=False)
    feather.write_feather(table, tmp_path / "plain" / "f.feather", chunksize=100)
    for name in ("p.parquet", "f.feather"):
        source = files(str(tmp_path / "plain" / name), x=FEATURES, y="label")
        with pytest.raises(ValueError, match=rf"'c' has 1 null .*row group 1 of .*{name}"):
            _model().fit(source, batch_size=32, epochs=1, shuffle=False, verbose=0)
    labels = pa.array([*Y[:149], None], pa.int64())  # an integer label read as -2**63
    (tmp_path / "label").mkdir()
    clean = pa.Table.from_pandas(_frame(), preserve_index=False)
    pq.write_table(clean.set_column(4, "label", labels), tmp_path / "label" / "p.parquet",
                   write_statistics=False)
    source = files(str(tmp_path / "label" / "*.parquet"), x=FEATURES, y="label")
    with pytest.raises(ValueError, match="column 'label' has 1 null"):
        _read_all(source)


def test_lists_of_unequal_lengths_are_refused_not_reshaped(tmp_path):
    rows = [[1.0, 2.0], [3.0, 4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]  # 9 values: (3, 3) reshaped
    pq.write_table(pa.table({"x": pa.array(rows), "label": [0, 1, 2]}), tmp_path / "r.parquet")
    source = files(str(tmp_path / "r.parquet"), x="x", y="label")
    with pytest.raises(ValueError, match=r"'x' holds lists of 2 to 4 values in row group 0"):
        _read_all(source)
    groups = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0, 7.0], [8.0, 9.0, 1.0]]  # 2 then 3 values
    pq.write_table(pa.table({"x": pa.array(groups), "label": [0, 1, 2, 0]}),
                   tmp_path / "g.parquet", row_group_size=2)
    source = files(str(tmp_path / "g.parquet"), x="x", y="label")
    with pytest.raises(ValueError, match=r"'x' holds lists of different lengths \[2, 3\]"):
        _read_all(source)
    even = [[1.0, 2.0], [3.0, None]]  # a null inside a list read as NaN
    pq.write_table(pa.table({"x": pa.array(even), "label": [0, 1]}), tmp_path / "n.parquet",
                   write_statistics=False)
    with pytest.raises(ValueError, match="column 'x' has 1 null"):
        _read_all(files(str(tmp_path / "n.parquet"), x="x", y="label"))


def test_a_file_rewritten_after_files_read_it_is_named(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pandas(_frame()), path, row_group_size=40)
    source = files(str(path), x=FEATURES, y="label")
    assert sum(len(x) for x, _, _ in _read_all(source)) == len(X)
    for rows, group in ((slice(0, 100), 40), (slice(None), 25)):  # fewer rows; regrouped
        pq.write_table(pa.Table.from_pandas(_frame(rows)), path, row_group_size=group)
        with pytest.raises(ValueError, match=r"p.parquet' changed after files\(...\) read"):
            _read_all(source)


def _epoch_ids(rank, world, folder):
    """On a rank of a 2-rank job: the sample ids (y) this rank trains on in epoch 0, read
    as fit reads them (the data fit prepares, the rank's feed)."""
    from bigtrain.api.inputs import prepare_data
    from bigtrain.engine.feed import EpochPlan, feed_epoch
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    pattern = f"{folder}/*.parquet"
    data = prepare_data(model, files(pattern, x=FEATURES, y="id", buffer_rows=30), None)
    plan = EpochPlan(0, 16, None, 7, True, (rank, world), 1, world, 0, torch.device("cpu"))
    feed = feed_epoch(data, plan)
    return [[int(v) for v in feed.next()[1].micro[0][1]] for _ in feed.step_numbers(0)]


def _write_unequal(folder, sizes, group):
    start = 0
    for k, size in enumerate(sizes):
        rows = slice(start, start + size)
        pq.write_table(pa.Table.from_pandas(_frame(rows), preserve_index=False),
                       folder / f"part{k}.parquet", row_group_size=group, write_statistics=False)
        start += size


def test_two_ranks_read_every_row_once_from_unequal_files(tmp_path):
    # 9 row groups of 7-20 rows in 3 files and an empty one; one file of one row group
    for name, sizes, group in (("unequal", [7, 50, 0, 93], 20), ("one_group", [150], 150)):
        folder = tmp_path / name
        folder.mkdir()
        _write_unequal(folder, sizes, group)
        a, b = run_ranks(_epoch_ids, 2, str(folder), timeout=60)
        assert len(a) == len(b) == 10  # 150 rows in global batches of 16, on both ranks
        assert sorted(v for batch in a + b for v in batch) == list(range(150))


def test_a_missing_value_one_rank_reads_stops_a_two_rank_fit_naming_it(tmp_path):
    frame = _frame()
    frame.loc[140:, "d"] = np.nan  # the last row group of b.parquet, which rank 1 reads
    for name, rows in (("a", slice(0, 100)), ("b", slice(100, None))):
        pq.write_table(pa.Table.from_pandas(frame.iloc[rows], preserve_index=False),
                       tmp_path / f"{name}.parquet", row_group_size=20, write_statistics=False)
    source = files(str(tmp_path / "*.parquet"), x=FEATURES, y="label")
    with pytest.raises(RuntimeError, match=r"column 'd' has 10 null .*row group 2 of "
                                           r".*b.parquet"):
        _model().fit(source, batch_size=16, epochs=1, verbose=0, strategy="ddp", devices=2,
                     timeout=60)


def _flat_model(shape):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=shape)
    model = Model(inp, Dense(3, activation="softmax")(Flatten()(inp)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_several_list_columns_stack_as_the_same_arrays_do(tmp_path):
    pairs = {name: pa.FixedSizeListArray.from_arrays(pa.array(X[:, cols].reshape(-1)), 2)
             for name, cols in (("front", [0, 1]), ("back", [2, 3]))}
    pq.write_table(pa.table({**pairs, "label": Y, "a": X[:, 0]}), tmp_path / "p.parquet",
                   row_group_size=64)
    source = files(str(tmp_path / "*.parquet"), x=["front", "back"], y="label")
    assert source.sample_shape() == (2, 2)  # was (2,), which refused the model below
    model = _flat_model((2, 2))
    model.fit(source, batch_size=32, epochs=2, shuffle=False, verbose=0)
    reference = _flat_model((2, 2))
    reference.fit(X.reshape(-1, 2, 2), Y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert all(np.array_equal(p, q) for p, q in zip(model.get_weights(),
                                                    reference.get_weights()))
    with pytest.raises(ValueError, match=r"x=\['front', 'a'\] mixes columns that cannot stack"):
        files(str(tmp_path / "*.parquet"), x=["front", "a"], y="label")
