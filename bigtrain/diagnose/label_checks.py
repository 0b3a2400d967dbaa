"""Label checks: broken one-hot rows, ids out of range, imbalance, leakage.

Example:
    from bigtrain.diagnose.label_checks import check_labels
    findings = check_labels(y_train, x_train_2d, y_test)
"""
from __future__ import annotations

import numpy as np

from bigtrain.diagnose.findings import Finding

IMBALANCE_RATIO = 10.0      # samples of the largest class / samples of the smallest
#: a ratio from here to IMBALANCE_RATIO is worth knowing (info): whether it costs the model
#: shows in its accuracy (baseline_checks: stuck at the majority share)
MODERATE_IMBALANCE = 3.0
MAX_LEAK_COLUMNS = 2000     # columns examined for label leakage
LEAK_CORRELATION = 0.999    # |corr(feature, target)| that counts as leakage for regression


def _is_one_hot_like(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] > 1 and bool(np.isin(y, (0, 1)).all())


def class_ids(y) -> np.ndarray | None:
    """Integer class ids of classification targets, or None for regression / no targets.

    Class ids are 1-D integers, 1-D floats that are all whole numbers with few distinct
    values, or one-hot rows (their argmax).
    """
    if y is None:
        return None
    y = np.asarray(y)
    if _is_one_hot_like(y):
        return y.argmax(axis=1)
    y = y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        return None
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() \
            and np.array_equal(y, np.round(y)) and len(np.unique(y)) <= max(2, len(y) // 10):
        return y.astype(np.int64)
    return None


def _one_hot_rows(y: np.ndarray) -> list[Finding]:
    if not _is_one_hot_like(y):
        return []
    bad = np.flatnonzero(y.sum(axis=1) != 1)
    if not len(bad):
        return []
    return [Finding("one_hot_labels", "error",
                    f"{len(bad)} of {len(y)} one-hot label rows do not sum to 1 "
                    f"(first: row {int(bad[0])} sums to {int(y[bad[0]].sum())})",
                    "give every sample exactly one class (multi-label targets need a "
                    "sigmoid output and binary_crossentropy instead)")]


def _label_range(ids: np.ndarray, test_ids: np.ndarray | None) -> list[Finding]:
    out, classes = [], np.unique(ids)
    if classes[0] < 0:
        out.append(Finding("label_out_of_range", "error",
                           f"{int((ids < 0).sum())} labels are negative (min {int(classes[0])})",
                           "map labels to 0..num_classes-1 (e.g. np.unique(y, "
                           "return_inverse=True)[1])"))
    elif classes[0] > 0:
        out.append(Finding("label_out_of_range", "warning",
                           f"labels start at {int(classes[0])}, not 0 (range {int(classes[0])}"
                           f"..{int(classes[-1])})",
                           f"subtract {int(classes[0])}: sparse categorical losses expect "
                           "0..num_classes-1, and an output of num_classes units would miss "
                           "the largest id"))
    if test_ids is not None:
        unseen = np.setdiff1d(np.unique(test_ids), classes)
        if len(unseen):
            out.append(Finding("label_out_of_range", "warning",
                               f"test labels {unseen[:5].tolist()} never occur in training",
                               "resplit with stratification so every class is in both sets"))
    return out


def _imbalance(ids: np.ndarray) -> list[Finding]:
    classes, counts = np.unique(ids, return_counts=True)
    if len(classes) < 2 or counts.max() / counts.min() < MODERATE_IMBALANCE:
        return []
    big, small = classes[counts.argmax()], classes[counts.argmin()]
    severity = "warning" if counts.max() / counts.min() >= IMBALANCE_RATIO else "info"
    return [Finding("class_imbalance", severity,
                    f"class {int(big)} has {int(counts.max())} samples, class {int(small)} "
                    f"only {int(counts.min())} ({counts.max() / counts.min():.1f}x)",
                    "pass class_weight={class: n_samples / (n_classes * count)} to fit, "
                    "or oversample the rare classes; judge with per-class recall, not accuracy")]


def _leaky_column(col: np.ndarray, ids: np.ndarray | None, y: np.ndarray,
                  probes: np.ndarray) -> bool:
    """True when `col` alone determines the target.

    For class ids: every value of the column occurs with one class only. Cheap probes
    first (rows sharing the value of a probe row must share its class), which rejects
    almost every honest column in O(n); then the exact check on the survivors.
    """
    if ids is not None:
        for i in probes:
            if np.any(ids[col == col[i]] != ids[i]):
                return False
        values, codes = np.unique(col, return_inverse=True)
        if len(values) < 2 or len(values) > max(2, len(col) // 10):
            return False  # constant, or an id-like column that trivially separates rows
        classes = np.unique(ids, return_inverse=True)[1]
        pairs = np.unique(codes.ravel().astype(np.int64) * (classes.max() + 1) + classes)
        return len(pairs) == len(values)
    if np.std(col) == 0 or np.std(y) == 0:
        return False
    return abs(float(np.corrcoef(col, y)[0, 1])) >= LEAK_CORRELATION


def _leakage(x2: np.ndarray, y: np.ndarray, ids: np.ndarray | None) -> list[Finding]:
    if x2 is None or (y.ndim > 1 and y.shape[1] > 1 and ids is None):
        return []
    target = ids if ids is not None else y.reshape(len(y)).astype(np.float64)
    cols = range(min(x2.shape[1], MAX_LEAK_COLUMNS))
    probes = np.random.default_rng(0).choice(len(x2), min(8, len(x2)), replace=False)
    leaks = [j for j in cols if np.isfinite(x2[:, j]).all()
             and _leaky_column(x2[:, j], ids, target, probes)]
    if not leaks:
        return []
    return [Finding("label_leakage", "error",
                    f"feature column(s) {leaks[:5]} alone predict the target exactly",
                    f"drop column {leaks[0]}: it encodes the label (or is computed from it) "
                    "and will not be available at prediction time")]


def check_labels(y, x2: np.ndarray | None = None, y_test=None) -> list[Finding]:
    """Label findings for targets `y` (and features `x2` for leakage, `y_test` for range).

    Args:
        y: training targets, or None (nothing to check).
        x2: training features as (samples, features), same rows as y.
        y_test: test targets.
    """
    if y is None:
        return []
    y = np.asarray(y)
    out = _one_hot_rows(y)
    ids = class_ids(y)
    if ids is not None:
        out += _label_range(ids, class_ids(y_test))
        out += _imbalance(ids)
    if np.issubdtype(y.dtype, np.number) and (ids is not None or np.isfinite(y).all()):
        out += _leakage(x2, y, ids)
    return out
