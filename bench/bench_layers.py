"""Layer-model training speed: bigtrain `model.fit` against a hand-written PyTorch loop on
the README's two layer examples (and Keras 3 on its torch backend, for the record).

Models (the examples' own builders):
    convnet  examples/mnist_convnet.py: Conv2D(32,3)-MaxPool-Conv2D(64,3)-MaxPool-Flatten-
             Dropout(0.5)-Dense(10, softmax) on the 4,000 shipped MNIST training digits,
             (28, 28, 1), sparse labels, batch 128.
    lstm     examples/text_lstm.py: Embedding(5000, 64)-LSTM(64)-Dense(10, softmax) on King
             James verses padded to 48 word ids, sparse labels, batch 64.

Contenders (one timed unit = one epoch over the same arrays, Adam lr 1e-3):
    bigtrain fit  `model.fit(x, y, batch_size=B, epochs=1, verbose=0)`, the whole call.
    torch loop    the same architecture written in torch.nn (NCHW convnet; nn.LSTM), tensors
                  prepared once, a permutation per epoch with index_select batches, fused
                  Adam, zero_grad(set_to_none=True), loss and hits summed on the device and
                  read once per epoch (the loop an expert writes on a CPU).
    torch loop NHWC  (convnet only) the same loop with model and inputs in torch's
                  channels_last memory format, the layout bigtrain's conv layers run in.
    keras/torch   with --keras: Keras 3 with KERAS_BACKEND=torch, `fit(..., epochs=1,
                  verbose=0)` (2-7x the torch loop's time: left out of make bench).

Every repeat runs all contenders once (rotated order); the table gives medians, the spread
and the bigtrain / torch ratio per repeat (the goal is >= 0.95).

    python bench/bench_layers.py            # a few minutes on 2 cores
    python bench/bench_layers.py --quick    # 1,000 samples, 5 repeats
    python bench/bench_layers.py --only lstm --threads 1
    python bench/bench_layers.py --keras    # also Keras 3 (torch backend), for the record
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "examples")]

from bench.bench_fit import default_threads  # noqa: E402
from bench.common import (Row, alternate, check_target, hand_tuned_epoch,  # noqa: E402
                          machine_line, print_table)

LR = 1e-3


# ---- data ---------------------------------------------------------------------------------
def convnet_data(n: int):
    """(x float32 (n, 28, 28, 1), y int64 (n,)) from the shipped MNIST digits."""
    from bigtrain.datasets import mnist_5k
    (x, y), _ = mnist_5k()
    return np.ascontiguousarray(x[:n].reshape(-1, 28, 28, 1), dtype=np.float32), \
        np.asarray(y[:n], dtype=np.int64)


def lstm_data(n: int):
    """(word ids int64 (n, 48), y int64 (n,)) from the King James verses."""
    from text_lstm import tokenize
    from bigtrain.data import kjv_verses
    (texts, y), _ = kjv_verses(10)
    x, _ = tokenize(texts[:n])
    return x, np.asarray(y[:n], dtype=np.int64)


# ---- the same models in torch.nn and in Keras -----------------------------------------------
def torch_convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(64 * 5 * 5, 10))


class TorchLSTM(nn.Module):
    def __init__(self, vocab=5000, units=64, classes=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, units)
        self.lstm = nn.LSTM(units, units, batch_first=True)
        self.out = nn.Linear(units, classes)

    def forward(self, x):
        _, (h, _) = self.lstm(self.emb(x))
        return self.out(h[0])


def keras_model(kind: str):
    import keras
    L = keras.layers
    if kind == "convnet":
        layers = [keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
                  L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
                  L.Dropout(0.5), L.Dense(10, activation="softmax")]
    else:
        layers = [keras.Input((48,), dtype="int64"), L.Embedding(5000, 64), L.LSTM(64),
                  L.Dense(10, activation="softmax")]
    return keras.Sequential(layers)


# ---- contenders: each returns a zero-argument callable running one epoch ------------------
def bigtrain_contender(kind: str, x, y, batch: int):
    import bigtrain
    from bigtrain.optimizers import Adam
    bigtrain.clear_session()
    torch.manual_seed(0)
    if kind == "convnet":
        from mnist_convnet import convnet
        model = convnet()
    else:
        from text_lstm import lstm_classifier
        model = lstm_classifier()
    model.compile(optimizer=Adam(learning_rate=LR), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0) and None


def torch_contender(kind: str, x, y, batch: int, channels_last: bool = False):
    """Tensors prepared once, fused Adam, no per-step host sync (as bench_fit's hand-tuned).
    `channels_last`: the convnet's weights and inputs in torch's channels_last memory format
    (the layout bigtrain's channels-last layers run in)."""
    torch.manual_seed(0)
    model = torch_convnet() if kind == "convnet" else TorchLSTM()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x)
    if kind == "convnet":  # (n, 1, 28, 28), torch's layout (or its channels_last view)
        xt = xt.permute(0, 3, 1, 2) if channels_last else xt.permute(0, 3, 1, 2).contiguous()
    return hand_tuned_epoch(model, xt, torch.from_numpy(y), batch, LR)


def keras_contender(kind: str, x, y, batch: int):
    import keras
    if keras.backend.backend() != "torch":
        print(f"(keras backend is {keras.backend.backend()!r}, not torch: skipped)")
        return None
    keras.utils.set_random_seed(0)
    model = keras_model(kind)
    model.compile(optimizer=keras.optimizers.Adam(LR), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0) and None


def bench_model(kind: str, n: int, repeats: int, keras_too: bool) -> float:
    """Time the contenders on one model; print the table; return bigtrain / torch."""
    x, y = convnet_data(n) if kind == "convnet" else lstm_data(n)
    batch = 128 if kind == "convnet" else 64
    contenders = {"bigtrain fit": bigtrain_contender(kind, x, y, batch),
                  "torch loop": torch_contender(kind, x, y, batch)}
    if kind == "convnet":
        contenders["torch loop NHWC"] = torch_contender(kind, x, y, batch, channels_last=True)
    if keras_too:
        run = keras_contender(kind, x, y, batch)
        if run is not None:
            contenders["keras/torch"] = run
    times = alternate(contenders, repeats=repeats, warmup=1)
    rows = [Row(name, len(x), t) for name, t in times.items()]
    steps = -(-len(x) // batch)
    ratios = print_table(f"{kind}: one epoch of {len(x):,} samples, batch {batch} ({steps} steps)",
                         rows, ratios=[("bigtrain fit", "torch loop"),
                                       ("bigtrain fit", "torch loop NHWC"),
                                       ("keras/torch", "torch loop")])
    for base in ("torch loop", "torch loop NHWC"):
        if base in times:  # repeat i of each ran in the same round
            paired = sorted(b / a for a, b in zip(times["bigtrain fit"], times[base]))
            print(f"  bigtrain / {base} per repeat: {paired[0]:.3f}..{paired[-1]:.3f}")
    return ratios["bigtrain fit/torch loop"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 samples, 5 repeats")
    parser.add_argument("--samples", type=int, default=None, help="samples per epoch")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (>= 5)")
    parser.add_argument("--only", choices=["convnet", "lstm"], nargs="+",
                        default=["convnet", "lstm"])
    parser.add_argument("--keras", action="store_true",
                        help="also time Keras 3 on its torch backend (about a minute more)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one per core on an idle machine, else 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or default_threads())
    n = args.samples or (1_000 if args.quick else 4_000)
    repeats = args.repeats or (5 if args.quick else 7)
    print(f"bench_layers: {n:,} samples, {repeats} repeats\n  {machine_line()}")
    for kind in args.only:
        ratio = bench_model(kind, n, repeats, args.keras)
        check_target(f"{kind} bigtrain/torch", ratio, 0.95)
    return 0  # targets are reported, not enforced: timings on a shared machine are noisy


if __name__ == "__main__":
    sys.exit(main())
