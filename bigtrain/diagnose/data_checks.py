"""Data-quality checks: the problems that make a model train badly whatever the strategy.

Every check takes arrays (numpy, torch or lists) and returns Findings with the numbers and
one fix. Inputs with more than two dimensions (images, sequences) are flattened to
(samples, features). Arrays longer than `max_rows` are checked on a random sample of rows.

Example:
    from bigtrain.diagnose.data_checks import check_data
    for f in check_data(x_train, y_train, x_test, y_test):
        print(f.severity, f.kind, f.evidence, "->", f.advice)
"""
from __future__ import annotations

import numpy as np

from bigtrain.diagnose.findings import Finding, sort_findings
from bigtrain.diagnose.label_checks import check_labels, class_ids

SCALE_RATIO = 100.0         # std of the widest feature / std of the narrowest
DUPLICATE_ROW_SHARE = 0.01  # duplicated rows above this share are reported
NEAR_CONSTANT_SHARE = 0.99  # a feature with one value in this share of rows is near-constant
#: rows off its common value a column needs before an exact match with another one means
#: anything: two columns that leave their common value in a row or two (an image's edge
#: pixels that one stroke touches) match by chance
DUPLICATE_MIN_ROWS = 10


def _np(a) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor or nested list."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _rows2d(a: np.ndarray) -> np.ndarray:
    """(samples, features): 1-D becomes one column, >2-D is flattened per sample."""
    return a.reshape(len(a), -1) if a.ndim != 2 else a


def _first(indices, k: int = 5) -> str:
    idx = [int(i) for i in indices]
    return ", ".join(map(str, idx[:k])) + (f" (+{len(idx) - k} more)" if len(idx) > k else "")


def _row_keys(x2: np.ndarray) -> np.ndarray:
    """One hashable bytes key per row (exact equality, NaNs compare by bit pattern)."""
    x2 = np.ascontiguousarray(x2)
    return x2.view(np.dtype((np.void, x2.dtype.itemsize * x2.shape[1]))).ravel()


def check_nonfinite(name: str, a: np.ndarray) -> list[Finding]:
    """NaN / Inf values: how many, in which columns and rows."""
    if not np.issubdtype(a.dtype, np.floating):
        return []
    a2 = _rows2d(a)
    nan, inf = np.isnan(a2), np.isinf(a2)
    if not (nan.any() or inf.any()):
        return []
    bad = nan | inf
    cols, rows = np.flatnonzero(bad.any(axis=0)), np.flatnonzero(bad.any(axis=1))
    return [Finding("nan_values", "error",
                    f"{name} has {int(nan.sum())} NaN and {int(inf.sum())} Inf values in "
                    f"{len(rows)} rows, columns {_first(cols)}",
                    f"impute or drop them before training (e.g. replace NaN in column "
                    f"{int(cols[0])} with its median); one NaN turns the loss into NaN")]


def _duplicate_columns(x2: np.ndarray, columns: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (first, copy) of identical columns among `columns`.

    One random projection gives every column a signature (a single matmul instead of a
    copy per column); only columns with near-equal signatures are compared exactly.
    """
    r = np.random.default_rng(0).standard_normal(len(x2))
    sig = np.concatenate([r @ x2[:, columns[i:i + 256]].astype(np.float64)  # 256 cols a time
                          for i in range(0, len(columns), 256)])
    order = np.argsort(sig, kind="stable")
    pairs, first = [], {}
    for a, b in zip(order[:-1], order[1:]):
        if np.isclose(sig[a], sig[b], rtol=1e-9, atol=1e-12) and \
                np.array_equal(x2[:, columns[a]], x2[:, columns[b]]):
            root = first.get(a, a)
            first[b] = root
            pairs.append(tuple(sorted((int(columns[root]), int(columns[b])))))
    return sorted(pairs)


def near_constant(x2: np.ndarray) -> np.ndarray:
    """(features,) bool: the columns where one value fills NEAR_CONSTANT_SHARE of the rows,
    such as an image's border pixels. Their std measures a few rare rows, not the feature's
    scale, so the scale and shift checks leave them out; the test is scale-free, so a dense
    feature on a tiny scale still counts."""
    # a value in over half the rows is the median
    return (x2 == np.median(x2, axis=0)).mean(axis=0) >= NEAR_CONSTANT_SHARE


def _informative(x2: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The `columns` that leave their most common value in DUPLICATE_MIN_ROWS rows or more
    (a value in over half the rows is the median; without one, every column qualifies),
    or in half the rows of a smaller sample."""
    off = (x2[:, columns] != np.median(x2[:, columns], axis=0)).sum(axis=0)
    return columns[off >= min(DUPLICATE_MIN_ROWS, max(len(x2) // 2, 1))]


def _constant(x2: np.ndarray, constant: np.ndarray) -> list[Finding]:
    """One finding for the columns that never change, naming how many more are constant
    but for a few rows (an image's border): both carry (almost) no information."""
    if not len(constant):
        return []
    near = int(near_constant(x2).sum()) - len(constant)
    also = (f"; {near} more hold one value in {NEAR_CONSTANT_SHARE:.0%} of the rows"
            if near > 0 else "")
    return [Finding("constant_features", "info",
                    f"{len(constant)} of {x2.shape[1]} features never change: columns "
                    f"{_first(constant)}{also}",
                    "drop them; they carry no information and waste parameters"
                    + (" (for images, cropping the border drops most)" if near > 0 else ""))]


def check_features(x2: np.ndarray) -> list[Finding]:
    """Constant features, duplicated features, and wildly different feature scales.
    Duplicates count among informative columns only (see DUPLICATE_MIN_ROWS)."""
    out = []
    floating = x2.dtype.kind == "f"
    if floating and not np.isfinite(x2).all():
        x2 = np.where(np.isfinite(x2), x2, np.nan)  # NaN/Inf reported by check_nonfinite
        lo, hi, std_fn = np.nanmin(x2, axis=0), np.nanmax(x2, axis=0), np.nanstd
        x2 = np.nan_to_num(x2)  # for the exact column comparison below
    else:
        lo, hi, std_fn = x2.min(axis=0), x2.max(axis=0), np.std
    out += _constant(x2, np.flatnonzero(lo == hi))
    varying = np.flatnonzero(lo != hi)
    informative = _informative(x2, varying) if len(varying) >= 2 else varying
    dups = _duplicate_columns(x2, informative) if len(informative) >= 2 else []
    if dups:
        pairs = ", ".join(f"{a}={b}" for a, b in dups[:5])
        out.append(Finding("duplicate_features", "warning",
                           f"{len(dups)} features repeat another column exactly: {pairs}",
                           f"drop the copies (e.g. column {dups[0][1]})"))
    scaled = np.setdiff1d(varying, np.flatnonzero(near_constant(x2)))
    if floating and len(scaled) >= 2:
        varying = scaled
        std = std_fn(x2[:, varying], axis=0)
        wide = np.quantile(std, 0.99, method="higher")
        narrow = np.quantile(std, 0.01, method="lower")
        if narrow > 0 and wide / narrow >= SCALE_RATIO:
            j_w, j_n = varying[np.argmax(std)], varying[np.argmin(std)]
            out.append(Finding("feature_scale", "warning",
                               f"feature standard deviations differ {wide / narrow:.3g}x "
                               f"(column {j_w}: {std.max():.3g}, column {j_n}: {std.min():.3g})",
                               "standardize features ((x - mean) / std, fitted on the "
                               "training set) so no feature dominates the gradients"))
    return out


def check_duplicate_rows(x2: np.ndarray, labels: np.ndarray | None) -> list[Finding]:
    """Exact duplicate samples, and duplicates that disagree on the label."""
    keys = _row_keys(x2)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    extra = int((counts - 1).sum())
    if extra / len(x2) < DUPLICATE_ROW_SHARE:
        return []
    evidence = f"{extra} of {len(x2)} rows ({extra / len(x2):.1%}) repeat an earlier row"
    severity, advice = "info", ("deduplicate: keep = np.unique(x, axis=0, return_index=True)[1]"
                                ", or check that repeats are intended")
    if labels is not None:
        pairs = np.unique(np.stack([inverse.ravel(), labels]), axis=1)
        conflicting = int(len(pairs[0]) - len(np.unique(pairs[0])))
        if conflicting:
            evidence += f"; {conflicting} repeated inputs carry different labels"
            severity, advice = "warning", ("fix the conflicting labels, then deduplicate: keep "
                                           "= np.unique(x, axis=0, return_index=True)[1]")
    return [Finding("duplicate_rows", severity, evidence, advice)]


def check_overlap(x2: np.ndarray, xt2: np.ndarray) -> list[Finding]:
    """Test rows that also appear in the training set (inflated test scores)."""
    if x2.shape[1] != xt2.shape[1] or x2.dtype != xt2.dtype:
        return [Finding("train_test_mismatch", "error",
                        f"train rows have {x2.shape[1]} {x2.dtype} features, test rows "
                        f"{xt2.shape[1]} {xt2.dtype}",
                        "preprocess train and test with the same pipeline")]
    shared = int(np.isin(_row_keys(xt2), _row_keys(x2)).sum())
    if shared == 0:
        return []
    return [Finding("train_test_overlap", "warning" if shared / len(xt2) < 0.05 else "error",
                    f"{shared} of {len(xt2)} test rows ({shared / len(xt2):.1%}) also appear "
                    "in the training set",
                    "remove them from the test set (split before augmenting/duplicating) "
                    "so the test score measures generalisation")]


def check_data(x, y=None, x_test=None, y_test=None, *, max_rows: int = 100_000,
               seed: int = 0, features_x=None) -> list[Finding]:
    """Run every data check; returns the findings, errors first.

    Args:
        x: training inputs, (samples, ...).
        y: training targets: class ids (samples,), one-hot (samples, classes), or values.
        x_test: test inputs, same feature layout as x.
        y_test: test targets.
        max_rows: check a random sample of this many rows when x is longer.
        seed: seed of that sample.
        features_x: the rows the constant and duplicate feature checks read, when `x` is
            itself a sample of them (a column constant in 1,000 rows may vary in the full
            data); default: `x`'s.

    Example:
        >>> import numpy as np
        >>> [f.kind for f in check_data(np.array([[1.0, np.nan], [2.0, 3.0], [3.0, 5.0]]))]
        ['nan_values']
    """
    x = _np(x)
    y = None if y is None else _np(y)
    rows = np.arange(len(x))
    if len(x) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))
    x2 = _rows2d(x[rows])
    ys = None if y is None else y[rows]
    out = check_nonfinite("x", x) + (check_nonfinite("y", y) if y is not None else [])
    if len(x2) >= 2:
        out += check_features(x2 if features_x is None else _rows2d(_np(features_x)))
    out += check_labels(ys, x2, None if y_test is None else _np(y_test))
    out += check_duplicate_rows(x2, class_ids(ys))
    if x_test is not None:
        xt = _np(x_test)
        out += check_nonfinite("x_test", xt) + check_overlap(x2, _rows2d(xt))
    return sort_findings(out)
