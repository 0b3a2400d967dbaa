"""Runs whose model comes out poor for one planted reason each, and healthy runs.

Each function trains for real (a few epochs on the shared small dataset) and returns the
run record the engine wrote; the suite (suite.py) names the cause each one plants.
"""
from __future__ import annotations

import numpy as np
import torch

from bigtrain import layers as L
from bigtrain.models import Sequential
from bigtrain.optimizers import SGD, Adam
from tests.diagnose.scenarios.common import (FEATURES, Data, base_data, fit_record, mlp,
                                             run)

BASE = base_data()


def unscaled_uniform():
    """Every feature has mean 500 and std 1000 (all equally far from a standard scale)."""
    d = BASE
    return fit_record(Data(d.x * 1000 + 500, d.y, d.xv * 1000 + 500, d.yv))


def unscaled_uneven():
    """Half the features in thousands, half standardized."""
    s = np.array([1000.0] * 4 + [1.0] * 4, dtype=np.float32)
    d = BASE
    return fit_record(Data(d.x * s, d.y, d.xv * s, d.yv))


def label_noise():
    """A third of the training labels replaced by random classes."""
    rng = np.random.default_rng(1)
    y = BASE.y.copy()
    flip = rng.random(len(y)) < 0.35
    y[flip] = 1 - y[flip]
    return fit_record(Data(BASE.x, y, BASE.xv, BASE.yv), epochs=4)


def lr_too_high():
    """SGD at learning rate 30 on standardized data: every step overshoots."""
    return fit_record(BASE, optimizer=SGD(learning_rate=30.0), epochs=3)


def lr_too_low():
    """SGD at learning rate 1e-5: the weights barely move."""
    return fit_record(BASE, optimizer=SGD(learning_rate=1e-5), epochs=3)


def overfitting():
    """40 training rows, 40 noisy features, 256 hidden units, 40 epochs."""
    rng = np.random.default_rng(2)
    x = np.concatenate([BASE.x, rng.standard_normal((len(BASE.x), 32)).astype(np.float32)], 1)
    xv = np.concatenate([BASE.xv, rng.standard_normal((len(BASE.xv), 32)).astype(np.float32)],
                        1)
    net = Sequential([L.Input((40,)), L.Dense(256, activation="relu"),
                      L.Dense(2, activation="softmax")])
    return run(net, x[:40], BASE.y[:40], (xv, BASE.yv), epochs=25, batch_size=40)


def underfitting():
    """A one-unit sigmoid bottleneck with a slow SGD: stuck below a logistic regression."""
    return fit_record(BASE, model=mlp((1,), activation="sigmoid"),
                      optimizer=SGD(learning_rate=0.05), epochs=3)


def class_imbalance():
    """95% of the rows are class 0 (the rare class is a corner of the feature space)."""
    score = BASE.x[:, 0] + 0.5 * BASE.x[:, 1]
    cut = np.quantile(score, 0.95)
    scorev = BASE.xv[:, 0] + 0.5 * BASE.xv[:, 1]
    y, yv = (score > cut).astype(np.int64), (scorev > cut).astype(np.int64)
    return fit_record(Data(BASE.x, y, BASE.xv, yv), epochs=3)


def train_val_shift():
    """Validation rows come from elsewhere: every feature moved by 2.5 standard deviations."""
    return fit_record(Data(BASE.x, BASE.y, BASE.xv + 2.5, BASE.yv), epochs=3)


def label_leakage():
    """Feature 0 is the label itself."""
    x, xv = BASE.x.copy(), BASE.xv.copy()
    x[:, 0], xv[:, 0] = BASE.y, BASE.yv
    return fit_record(Data(x, BASE.y, xv, BASE.yv), epochs=3)


def split_overlap():
    """Half the validation rows are copies of training rows."""
    xv, yv = BASE.xv.copy(), BASE.yv.copy()
    xv[:80], yv[:80] = BASE.x[:80], BASE.y[:80]
    return fit_record(Data(BASE.x, BASE.y, xv, yv), epochs=3)


def wrong_loss():
    """Three classes trained as a regression: mse on class ids 0, 1, 2 with one output."""
    d = base_data(classes=3)
    return run(mlp(classes=1), d.x, d.y.astype(np.float32), (d.xv, d.yv.astype(np.float32)),
               loss="mse", metrics=(), epochs=3)


def dead_relus():
    """The hidden ReLU layer starts with biases of -20: no unit ever fires."""
    model = mlp((32,))
    model.build((FEATURES,))
    first = next(m for m in model.net.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.bias.fill_(-20.0)
    return fit_record(BASE, model=model, epochs=3)


def vanishing_gradients():
    """Twelve sigmoid layers: the first layers get almost no gradient."""
    return fit_record(BASE, model=mlp((16,) * 12, activation="sigmoid"),
                      optimizer=SGD(learning_rate=0.05), epochs=3)


def issue_nan_run():
    """The issue's first run: mean 500 / std 1000 features, 40% random labels, SGD at 0.5,
    ReLU as in the issue's model: the loss becomes NaN in the first epoch."""
    d = _issue_data()
    return fit_record(d, model=mlp((32,), activation="relu"),
                      optimizer=SGD(learning_rate=0.5), epochs=5)


def issue_low_lr_run():
    """The issue's second run: the same data at SGD learning rate 0.001."""
    return fit_record(_issue_data(), model=mlp((32,), activation="tanh"),
                      optimizer=SGD(learning_rate=1e-3), epochs=5)


def _issue_data() -> Data:
    rng = np.random.default_rng(3)
    y, yv = BASE.y.copy(), BASE.yv.copy()
    for labels in (y, yv):
        rand = rng.random(len(labels)) < 0.4
        labels[rand] = rng.integers(0, 2, int(rand.sum()))
    return Data(BASE.x * 1000 + 500, y, BASE.xv * 1000 + 500, yv)


# ---- healthy runs ---------------------------------------------------------------------------

def healthy_binary():
    return fit_record(BASE, epochs=4)


def healthy_multiclass():
    return fit_record(base_data(classes=3, seed=4), model=mlp((32,), classes=3), epochs=4)


def healthy_regression():
    d = BASE
    t = d.x @ np.linspace(-1, 1, FEATURES).astype(np.float32)
    tv = d.xv @ np.linspace(-1, 1, FEATURES).astype(np.float32)
    return run(mlp((16,), classes=1), d.x, t[:, None], (d.xv, tv[:, None]), loss="mse",
               metrics=(), epochs=4)


def healthy_normalized():
    """Raw features in the thousands, scaled by an adapted Normalization layer."""
    d = BASE
    x, xv = d.x * 1000 + 500, d.xv * 1000 + 500
    norm = L.Normalization()
    norm.adapt(x)
    return fit_record(Data(x, d.y, xv, d.yv), model=mlp(first=norm), epochs=4)


def healthy_adam_small_lr():
    """Adam at 3e-3 for longer: slower, still healthy."""
    return fit_record(base_data(seed=5), optimizer=Adam(learning_rate=3e-3), epochs=8)
