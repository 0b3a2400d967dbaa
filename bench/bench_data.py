"""Background loading: a map-style Dataset with per-item work through `fit(workers=W)`
against a hand-written DataLoader loop with the same workers.

Dataset: 8,000 items stored as raw bytes; `__getitem__` decodes one (frombuffer, a few
elementwise passes over 256 float32 features: about 100 us of work per item, as a light
image decode or tokenizer would). Model: Input(256) -> Dense(256, relu) -> Dense(10,
softmax), Adam lr 1e-3, batch 64, one torch thread per process. One timed unit = one epoch.

Contenders:
    fit workers=W   `model.fit(ds, batch_size=64, epochs=1, workers=W, verbose=0)`, the whole
                    call (the worker processes start inside it).
    hand loop       `for xb, yb in DataLoader(ds, batch_size=64, shuffle=True, num_workers=W)`
                    with the same torch MLP, fused Adam, cross-entropy; the loader (and its
                    workers) is made each epoch, as most loops do.
    fit workers=0   the items decoded in the training process (what fit did before).

    python bench/bench_data.py            # about a minute on 2 cores
    python bench/bench_data.py --quick    # 2,000 items
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Row, alternate, check_target, machine_line, print_table  # noqa: E402

FEATURES, HIDDEN, CLASSES, BATCH, LR = 256, 256, 10, 64, 1e-3


class Encoded(Dataset):
    """Items kept as bytes and decoded on every read (the per-item work)."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, FEATURES), dtype=np.float32)
        w = rng.standard_normal((FEATURES, CLASSES), dtype=np.float32)
        self.blobs = [row.tobytes() for row in x]
        self.labels = (x @ w).argmax(1).astype(np.int64)

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        x = np.frombuffer(self.blobs[i], dtype=np.float32).copy()
        for _ in range(40):  # the decode: elementwise passes, about 100 us in all
            x = np.tanh(x) * 1.5 + 0.01 * x
        return torch.from_numpy(x), torch.tensor(self.labels[i])


def fit_contender(ds: Dataset, workers: int):
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(FEATURES,))
    # softmax + sparse cross-entropy: bigtrain fuses them into torch's cross_entropy on the
    # logits, the hand loop's loss (a plain Dense(10) would make Keras read its outputs as
    # probabilities: log of clamped logits, a different loss and 3 more ops a step)
    out = Dense(CLASSES, activation="softmax")(Dense(HIDDEN, activation="relu")(inp))
    model = Model(inputs=inp, outputs=out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  learning_rate=LR)
    return lambda: model.fit(ds, batch_size=BATCH, epochs=1, workers=workers, verbose=0) and None


def hand_contender(ds: Dataset, workers: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)

    def run():
        loss_sum = torch.zeros(())
        for xb, yb in DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers):
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        float(loss_sum)  # read once per epoch, as a progress line would
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (2,000 items)")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = args.items or (2000 if args.quick else 8000)
    ds, w = Encoded(n), args.workers
    print(f"background loading, {n} items, batch {BATCH}, workers {w}; {machine_line()}")
    names = {f"fit workers={w}": fit_contender(ds, w), f"hand loop workers={w}":
             hand_contender(ds, w), "fit workers=0": fit_contender(ds, 0)}
    times = alternate(names, repeats=args.repeats, warmup=1)
    rows = [Row(name, n, t) for name, t in times.items()]
    ratios = print_table("samples/s, one epoch per unit", rows,
                         ratios=[(f"fit workers={w}", f"hand loop workers={w}"),
                                 (f"fit workers={w}", "fit workers=0")])
    check_target("fit / hand loop", ratios[f"fit workers={w}/hand loop workers={w}"], 0.95)
    return 0


if __name__ == "__main__":
    sys.exit(main())
