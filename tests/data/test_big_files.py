"""Data larger than memory, end to end: 1.2 GB of Parquet in 160 files (generated here)
trains under ddp on 2 ranks, each whole rank process peaking at well under half the data's
size (peak RSS, torch included) and reading it adding far less;
rank 1 is killed mid-epoch, the group restarts, resumes from the newest checkpoint inside
the epoch, and ends with the weights of a run that was never interrupted."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bigtrain
from bigtrain.callbacks import Callback
from bigtrain.data import files
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from tests.parallel.test_restarts import KillRankOnce

FILES, ROWS_PER_FILE, GROUP, WIDTH = 160, 3_750, 750, 512  # 600,000 rows x 2 KiB = 1.2 GB
BATCH = 5_000  # 120 steps per epoch
FIT = dict(batch_size=BATCH, epochs=1, verbose=0)


def write_dataset(folder) -> int:
    """160 Parquet files of float32 rows (a fixed-size list column "x") and int labels from
    a linear teacher (each file's rows are a shifted copy of one random block: cheap to
    make, different labels); returns the bytes of the rows."""
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((WIDTH, 4)).astype(np.float32)
    base = rng.random((ROWS_PER_FILE, WIDTH), dtype=np.float32) - 0.5
    for k in range(FILES):
        x = np.roll(base, k * 7, axis=1)  # cheaper than new random numbers; new labels too
        column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), WIDTH)
        # plain encoding: random floats never fit a dictionary, and trying one first made
        # writing the 1.2 GB take 6x longer (half of this test's time)
        pq.write_table(pa.table({"x": column, "label": (x @ teacher).argmax(1)}),
                       folder / f"part-{k:03d}.parquet", row_group_size=GROUP,
                       compression="none", use_dictionary=False)
    return FILES * ROWS_PER_FILE * WIDTH * 4


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in kB (VmHWM: the peak
    resident set of this program, not inherited across exec as getrusage's is)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class PeakMemory(Callback):
    """Writes this rank's resident memory (kB) at the start of training, after its first
    step (torch's first-step allocations are made by then), and its peak, to
    `folder/rss-<rank>-<pid>`."""

    main_process_only = False

    def __init__(self, folder):
        super().__init__()
        self.folder, self.start, self.warm = str(folder), 0, 0

    def on_train_begin(self, logs=None):
        self.start = _status_kb("VmRSS")

    def on_train_batch_end(self, batch, logs=None):
        self.warm = self.warm or _status_kb("VmRSS")

    def on_train_end(self, logs=None):
        name = f"rss-{os.environ.get('RANK', '0')}-{os.getpid()}"
        with open(os.path.join(self.folder, name), "w") as f:
            f.write(f"{self.start} {self.warm} {_status_kb('VmHWM')}")


def model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(WIDTH,))
    m = Model(inputs=inp, outputs=Dense(4, activation="softmax")(inp))
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", learning_rate=1e-3)
    return m


@pytest.mark.slow
def test_ddp_on_files_larger_than_rank_memory_survives_a_killed_rank(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    size = write_dataset(data)
    source = files(str(data / "*.parquet"), x="x", y="label", buffer_rows=6_000)
    reference = model()
    reference.fit(source, **FIT)
    marker, rss = tmp_path / "killed", tmp_path / "rss"
    rss.mkdir()
    trained = model()
    history = trained.fit(source, **FIT, strategy="ddp", devices=2, timeout=60, max_restarts=1,
                          checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=5,
                          callbacks=[KillRankOnce(1, 0, 17, str(marker)), PeakMemory(rss)])
    assert marker.exists(), "rank 1 was never killed: the test did not test a restart"
    assert history.epoch == [0]
    diff = max(float(np.abs(a - b).max())
               for a, b in zip(reference.get_weights(), trained.get_weights()))
    assert diff <= 1e-5
    untrained = model().get_weights()  # the equality above can tell training apart
    assert max(float(np.abs(a - b).max())
               for a, b in zip(reference.get_weights(), untrained)) > 1e-3
    peaks = [tuple(int(v) * 1024 for v in p.read_text().split()) for p in rss.iterdir()
             if int(p.read_text().split()[1])]  # a rank stopped before its first step: none
    assert len(peaks) >= 2  # both ranks of the restarted group (and the stopped rank 0)
    print(f"\ndataset {size / 2**20:.0f} MiB; rank RSS (MiB: start, after step 1, peak): " +
          ", ".join(f"{a / 2**20:.0f}, {b / 2**20:.0f}, {c / 2**20:.0f}" for a, b, c in peaks))
    for begin, warm, peak in peaks:
        # torch and bigtrain take about 400 MiB before the first step and torch's first step
        # about 100 MiB more; reading the rest of the 1172 MiB adds a block of row groups, the
        # next one being read, a batch: not the data (measured: peaks of 515-526 MiB)
        assert peak < 0.6 * size, "a rank's memory grew with the data: not streamed"
        assert peak - warm < size / 10
