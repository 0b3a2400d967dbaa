"""bigtrain.data.files: Parquet and Arrow/Feather files read lazily per rank. In file order
they train exactly like the same arrays; shuffled, every rank count sees the same global
batches, each rank reading only its own row groups; a run stopped on 2 ranks resumes on 1 to
the weights of an uninterrupted run; bad globs, columns and schemas are named in errors."""
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from bigtrain.data import files
from bigtrain.data.files import FileSource
from bigtrain.data.streams import Window
from bigtrain.engine.data import shard_bounds
from tests.api.conftest import fresh_seed_model, teacher_data
from tests.engine.test_checkpoint import StopAt

X, _, IDS = teacher_data(n=200)
FEATURES = [f"f{i}" for i in range(X.shape[1])]


def _table(rows: slice, **extra):
    return pa.table({**{n: X[rows, i] for i, n in enumerate(FEATURES)}, "label": IDS[rows],
                     **extra})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    for k in range(4):  # 4 files x 50 rows in row groups of 20, 20, 10
        pq.write_table(_table(slice(k * 50, (k + 1) * 50)), d / f"part{k}.parquet",
                       row_group_size=20)
    feather.write_feather(_table(slice(None)), d / "all.feather", chunksize=30)
    return d


fresh = fresh_seed_model  # a compiled seed model from seed 0


def _diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


def _fit(source, **kw):
    model = fresh()
    history = model.fit(source, epochs=2, batch_size=32, verbose=0, **kw)
    return model.get_weights(), history


def test_files_in_order_train_like_arrays(folder):
    model = fresh()
    model.fit(X, IDS, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for pattern in ("*.parquet", "*.feather"):
        got, _ = _fit(files(str(folder / pattern), x=FEATURES, y="label"), shuffle=False)
        assert _diff(model.get_weights(), got) == 0.0
    shuffled, _ = _fit(files(str(folder / "*.parquet"), x=FEATURES, y="label"))
    assert _diff(model.get_weights(), shuffled) > 1e-4  # the check sees the order


class Counting(FileSource):
    """Notes which row groups each read asked for."""
    reads: list = []

    def read_units(self, units):
        Counting.reads.append(list(units))
        return super().read_units(units)


def _rank_rows(source, rank, ranks, data_pass=0):
    window = Window(data_pass, 0, None, 32, rows=lambda n: shard_bounds(n, rank, ranks),
                    seed=3, shuffle=True, shard=(rank, ranks))
    return [sorted(x[:, 0].tolist()) for _, (x, _, _) in source.batches(window)]


def test_every_rank_count_sees_the_same_batches_reading_only_its_row_groups(folder):
    source = Counting([str(p) for p in sorted(folder.glob("*.parquet"))], FEATURES, "label",
                      None, buffer_rows=45)
    one = _rank_rows(source, 0, 1)
    assert sorted(v for b in one for v in b) == sorted(X[:, 0].tolist())  # a full pass
    assert one != sorted(one) and one != _rank_rows(source, 0, 1, data_pass=1)  # shuffled
    for ranks in (2, 3):
        Counting.reads = []
        per_rank = [_rank_rows(source, r, ranks) for r in range(ranks)]
        merged = [sorted(v for r in range(ranks) for v in per_rank[r][k]) for k in range(len(one))]
        assert merged == one
        order = source.unit_order(0, 3, True)
        for r, reads in enumerate(_split_reads(Counting.reads, ranks)):
            mine = {u for j, u in enumerate(order) if j % ranks == r}
            assert set(reads) <= mine and set(reads)  # only its own row groups, some


def _split_reads(reads, ranks):
    """The reads above in rank order: each rank's pass is read before the next rank's."""
    out, per = [], len(reads) // ranks
    for r in range(ranks):
        out.append([u for units in reads[r * per:(r + 1) * per] for u in units])
    return out




@pytest.mark.slow
def test_a_run_stopped_on_two_ranks_resumes_on_one(folder, tmp_path):
    source = files(str(folder / "*.parquet"), x=FEATURES, y="label", buffer_rows=45)
    reference, _ = _fit(source)
    ckpt = dict(checkpoint_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(RuntimeError):
        _fit(source, strategy="ddp", devices=2, timeout=60, callbacks=[StopAt(1, 3, RuntimeError)], **ckpt)
    resumed, history = _fit(source, **ckpt)
    assert history.epoch == [1]  # resumed inside the second epoch
    assert _diff(reference, resumed) <= 1e-5


def test_bad_files_are_named(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        files(str(tmp_path / "nothing.parquet"), x=FEATURES, y="label")
    with pytest.raises(ValueError, match=r"'f99'.*part0.parquet"):
        files(str(folder / "*.parquet"), x=["f0", "f99"], y="label")
    pq.write_table(_table(slice(0, 10)), tmp_path / "a.parquet")
    pq.write_table(_table(slice(0, 10)).set_column(0, "f0", pa.array(X[:10, 0].astype("f8"))),
                   tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"'f0' is double in .*b.parquet.* float in .*a.parquet"):
        files(str(tmp_path / "*.parquet"), x=FEATURES, y="label")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        files(str(tmp_path / "*"), x=FEATURES, y="label")
