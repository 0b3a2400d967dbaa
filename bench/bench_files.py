"""Reading Parquet while training: `fit(bigtrain.data.files(...))` against a hand-written
pyarrow + DataLoader loop over the same files.

Data: 24 Parquet files x 5,000 rows (row groups of 1,000) of 256 float32 features in one
fixed-size list column and an int label (about 120 MB, uncompressed, generated in a
temporary folder). Model: Input(256) -> Dense(256, relu) -> Dense(10), Adam lr 1e-3,
batch 1,000, one torch thread. One timed unit = one epoch.

Contenders:
    fit files      `model.fit(files("*.parquet", x="x", y="label"), batch_size=1000,
                   epochs=1)`: row groups shuffled, a 8,000-row shuffle buffer, the next
                   block read by a background thread; the whole call.
    hand loop      an IterableDataset that shuffles the row groups, reads each with
                   `ParquetFile.read_row_group`, shuffles a 8,000-row buffer and yields
                   ready batches, through `DataLoader(batch_size=None, num_workers=1)`;
                   the same torch MLP, fused Adam, cross-entropy.

    python bench/bench_files.py            # one to two minutes on 2 cores
    python bench/bench_files.py --quick    # 8 files
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Row, alternate, check_target, machine_line, print_table  # noqa: E402

ROWS, GROUP, WIDTH, CLASSES, BATCH, BUFFER, LR = 5_000, 1_000, 256, 10, 1_000, 8_000, 1e-3


def write_files(folder: str, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((WIDTH, CLASSES)).astype(np.float32)
    paths = []
    for k in range(count):
        x = rng.standard_normal((ROWS, WIDTH), dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), WIDTH)
        paths.append(os.path.join(folder, f"part-{k:03d}.parquet"))
        pq.write_table(pa.table({"x": column, "label": (x @ teacher).argmax(1)}), paths[-1],
                       row_group_size=GROUP, compression="none")
    return paths


class HandParquet(IterableDataset):
    """What one writes by hand: shuffled row groups, a shuffle buffer, ready batches."""

    def __init__(self, paths: list[str]):
        self.paths, self.epoch = paths, 0

    def __iter__(self):
        rng = np.random.default_rng(self.epoch)
        self.epoch += 1
        groups = [(p, g) for p in self.paths for g in range(pq.ParquetFile(p).num_row_groups)]
        xs, ys = [], []
        for i in rng.permutation(len(groups)):
            path, g = groups[i]
            table = pq.ParquetFile(path).read_row_group(g)
            flat = table.column("x").combine_chunks().flatten().to_numpy()
            xs.append(flat.reshape(len(table), WIDTH))
            ys.append(table.column("label").to_numpy())
            if sum(len(y) for y in ys) >= BUFFER:
                yield from self._batches(np.concatenate(xs), np.concatenate(ys), rng)
                xs, ys = [], []
        if ys:
            yield from self._batches(np.concatenate(xs), np.concatenate(ys), rng)

    @staticmethod
    def _batches(x, y, rng):
        order = rng.permutation(len(y))
        for s in range(0, len(y), BATCH):
            idx = order[s:s + BATCH]
            yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def fit_contender(pattern: str):
    import bigtrain
    from bigtrain.data import files
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(WIDTH,))
    model = Model(inputs=inp, outputs=Dense(CLASSES)(Dense(256, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", learning_rate=LR)
    source = files(pattern, x="x", y="label", buffer_rows=BUFFER)
    return lambda: model.fit(source, batch_size=BATCH, epochs=1, verbose=0) and None


def hand_contender(paths: list[str]):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, 256), nn.ReLU(), nn.Linear(256, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    data = HandParquet(paths)

    def run():
        loss_sum = torch.zeros(())
        for xb, yb in DataLoader(data, batch_size=None, num_workers=1):
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        float(loss_sum)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 files instead of 24")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    count = 8 if args.quick else 24
    with tempfile.TemporaryDirectory(prefix="bench-files-") as folder:
        paths = write_files(folder, count)
        n = count * ROWS
        print(f"Parquet through fit, {count} files, {n} rows ({n * WIDTH * 4 / 2**20:.0f} MiB "
              f"of features), batch {BATCH}; {machine_line()}")
        times = alternate({"fit files": fit_contender(os.path.join(folder, "*.parquet")),
                           "hand loop": hand_contender(paths)}, repeats=args.repeats)
    rows = [Row(name, n, t) for name, t in times.items()]
    ratios = print_table("samples/s, one epoch per unit", rows, ratios=[("fit files", "hand loop")])
    check_target("fit / hand pyarrow loop", ratios["fit files/hand loop"], 0.95)
    return 0


if __name__ == "__main__":
    sys.exit(main())
