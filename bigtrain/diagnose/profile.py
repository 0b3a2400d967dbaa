"""What the data alone says about a run, measured once on a sample at the end of a fit and
kept in the run record (RunRecord.data_profile): the feature scale against a standard scale,
the data checks (bigtrain.diagnose.data_checks), train/validation shift, and the baselines a
model must beat: the majority class (or the mean) and a scikit-learn linear model on the same
features. With `cleanlab` installed, likely label errors (confident learning on out-of-sample
predicted probabilities). Inputs wider than MAX_FEATURES give the linear model and the label
check their MAX_FEATURES highest-variance columns; a check that cannot run says why in
profile["skipped"].

Example:
    from bigtrain.diagnose.profile import profile_data
    profile = profile_data(x_train, y_train, x_val, y_val, loss="sparse_categorical_crossentropy")
    profile["linear"]        # {"metric": "accuracy", "train": 0.81, "val": 0.79}
"""
from __future__ import annotations

import warnings

import numpy as np

from bigtrain.diagnose.data_checks import check_data, near_constant
from bigtrain.diagnose.label_checks import class_ids

MAX_ROWS = 1000        # rows of each split the profile looks at
MAX_FEATURES = 512     # wider inputs: the linear model sees their highest-variance columns
CV_FOLDS = 3           # folds of the out-of-sample probabilities for cleanlab
MIN_LABEL_ROWS = 200   # fewer training rows get no label-error estimate
FULL_FEATURE_CHECK = 20_000_000  # values of x up to which the feature checks read every row


def _standardize(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mu, sd = ref.mean(0), ref.std(0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def _sample(n: int, seed: int) -> np.ndarray:
    rows = np.arange(n)
    return rows if n <= MAX_ROWS else np.sort(
        np.random.default_rng(seed).choice(n, MAX_ROWS, replace=False))


def scale_profile(x2: np.ndarray) -> dict:
    """Typical feature magnitude against the standard scale (mean 0, std 1)."""
    mean, std = x2.mean(0), x2.std(0)
    varying = (std > 0) & ~near_constant(x2)  # a rare value's std is not a scale
    rms = np.sqrt(mean ** 2 + std ** 2)[varying]
    return {"median_abs_mean": float(np.median(np.abs(mean[varying]))) if varying.any() else 0.0,
            "median_std": float(np.median(std[varying])) if varying.any() else 0.0,
            "median_rms": float(np.median(rms)) if varying.any() else 0.0,
            "std_ratio": float(std[varying].max() / std[varying].min()) if varying.sum() > 1
            else 1.0}


def shift_profile(x2: np.ndarray, xv2: np.ndarray) -> dict:
    """Largest standardized difference of a feature's mean between train and validation."""
    sd = x2.std(0)
    # a near-constant training feature's tiny std would turn any move into thousands of stds
    usable = (sd > 0) & ~near_constant(x2)
    smd = np.abs(xv2.mean(0) - x2.mean(0)) / np.where(usable, sd, np.inf)
    j = int(np.argmax(smd))
    return {"max_mean_shift": float(smd[j]), "feature": j,
            "features_shifted": int((smd > 0.5).sum())}


def _linear(x2, y, xv2, yv, ids, ids_v) -> tuple[dict, np.ndarray | None]:
    """The linear baseline on standardized features; for classes also the out-of-sample
    probabilities of the training rows (cross-validated) for the label check."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import cross_val_predict
    xs = _standardize(x2, x2)
    xvs = None if xv2 is None else _standardize(xv2, x2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ids is None:
            model = Ridge(alpha=1.0).fit(xs, y)
            out = {"metric": "mse", "train": float(np.mean((model.predict(xs) - y) ** 2))}
            if xvs is not None:
                out["val"] = float(np.mean((model.predict(xvs) - yv) ** 2))
            return out, None
        model = LogisticRegression(max_iter=300).fit(xs, ids)
        out = {"metric": "accuracy", "train": float(model.score(xs, ids))}
        if xvs is not None and ids_v is not None:
            out["val"] = float(model.score(xvs, ids_v))
        counts = np.bincount(ids)
        folds = min(CV_FOLDS, int(counts[counts > 0].min()))
        probs = None
        if folds >= 2:
            probs = cross_val_predict(LogisticRegression(max_iter=300), xs, ids, cv=folds,
                                      method="predict_proba")
        return out, probs


def label_issues(labels: np.ndarray, probs: np.ndarray) -> dict | None:
    """cleanlab's likely label errors: their share and the worst rows (lowest self-confidence
    first); None when cleanlab is not installed or the probabilities do not fit the labels."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    if probs is None or probs.shape[1] != labels.max() + 1 or probs.shape[1] < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # n_jobs=1: cleanlab's default forks a multiprocessing Pool, and a fork of a training
        # process (torch, gloo and data-loading threads holding locks) can hang for ever
        ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence",
                                   n_jobs=1)
    return {"share": float(len(ranked) / len(labels)), "worst": [int(i) for i in ranked[:10]],
            "accuracy_of_probs": float((probs.argmax(1) == labels).mean())}


def _classes(ids: np.ndarray, ids_v: np.ndarray | None) -> dict:
    counts = np.bincount(ids)
    major = int(counts.argmax())
    out = {"classes": int(len(counts)), "class_counts": counts.tolist(),
           "majority_class": major, "majority_share": float(counts.max() / len(ids))}
    if ids_v is not None:
        out["val_majority_share"] = float((ids_v == major).mean())
        # the best a model that ignores the inputs can score on validation: a constant
        # guess of the most common validation class (small splits differ from training's)
        if len(ids_v) and ids_v.min() >= 0:
            out["val_top_share"] = float(np.bincount(ids_v).max() / len(ids_v))
    return out


def profile_data(x, y, x_val=None, y_val=None, *, loss: str | None = None,
                 output_units: int | None = None, val_probs=None, seed: int = 0,
                 loss_reads_probabilities: bool = False) -> dict:
    """The data profile of one run (JSON-ready).

    Args:
        x, y: training inputs (samples, ...) and targets, numpy.
        x_val, y_val: validation inputs and targets (None: no validation data).
        loss: the compiled loss's name ("mse", "sparse_categorical_crossentropy", ...).
        output_units: units of the model's output.
        val_probs: the trained model's class probabilities on the validation sample rows
            `profile_rows(len(x_val))` (out-of-sample), used for the label check when they
            beat the linear model's.
        seed: seed of the row sample.
        loss_reads_probabilities: the loss takes the model's output as logits
            (from_logits=True) while the model already outputs softmax probabilities.
    """
    rows = _sample(len(x), seed)
    x2 = np.asarray(x)[rows].reshape(len(rows), -1)
    y_s = None if y is None else np.asarray(y)[rows]
    xv2 = yv_s = None
    if x_val is not None:
        vrows = _sample(len(x_val), seed)
        xv2 = np.asarray(x_val)[vrows].reshape(len(vrows), -1)
        yv_s = None if y_val is None else np.asarray(y_val)[vrows]
    out = {"rows": int(len(x)), "features": int(x2.shape[1]), "loss": loss,
           "output_units": output_units, "sample_rows": int(len(rows)),
           "loss_reads_probabilities": bool(loss_reads_probabilities)}
    # the feature checks read every row where that is cheap: a column constant, or equal to
    # another, in the sample can differ in the rows it left out
    whole = np.asarray(x) if np.asarray(x).size <= FULL_FEATURE_CHECK else None
    out["data_findings"] = [f.to_dict() for f in check_data(x2, y_s, xv2, yv_s,
                                                            features_x=whole)]
    floating = x2.dtype.kind == "f" and np.isfinite(x2).all()
    if floating:
        out["scale"] = scale_profile(x2)
        if xv2 is not None and xv2.shape[1] == x2.shape[1] and np.isfinite(xv2).all():
            out["shift"] = shift_profile(x2, xv2)
    ids, ids_v = class_ids(y_s), class_ids(yv_s)
    if y_s is None:
        return out
    out["task"] = "classification" if ids is not None else "regression"
    if ids is not None and ids.min() >= 0:
        out.update(_classes(ids, ids_v))
    elif ids is None and np.issubdtype(np.asarray(y_s).dtype, np.number):
        yf = np.asarray(y_s, dtype=np.float64).reshape(len(y_s), -1)[:, 0]
        out["target_std"] = float(yf.std())
        if yv_s is not None:
            yvf = np.asarray(yv_s, dtype=np.float64).reshape(len(yv_s), -1)[:, 0]
            out["mean_baseline_mse"] = float(np.mean((yvf - yf.mean()) ** 2))
    out["skipped"] = _fit_baselines(out, x2, y_s, xv2, yv_s, ids, ids_v, val_probs,
                                    None if x_val is None else _sample(len(x_val), seed), rows)
    return out


def _fit_baselines(out, x2, y_s, xv2, yv_s, ids, ids_v, val_probs, vrows, rows) -> list[str]:
    """The linear baseline and the label check into `out`; returns why any was skipped."""
    if x2.dtype.kind not in "fiub" or not np.isfinite(x2).all():
        return ["linear baseline and label check: inputs are not finite numbers"]
    if ids is not None and ids.min() < 0:
        return ["linear baseline and label check: class ids are negative"]
    yv_lin = None if yv_s is None or ids is not None else \
        np.asarray(yv_s, dtype=np.float64).reshape(len(yv_s), -1)[:, 0]
    y_lin = ids if ids is not None else \
        np.asarray(y_s, dtype=np.float64).reshape(len(y_s), -1)[:, 0]
    ok_val = xv2 is not None and xv2.shape[1] == x2.shape[1] and np.isfinite(xv2).all()
    xs, xvs = _reduced(x2, xv2 if ok_val else None)
    out["linear"], probs = _linear(xs, y_lin, xvs, yv_lin, ids, ids_v if ok_val else None)
    out["linear"]["features"] = int(xs.shape[1])  # of out["features"]: fewer when reduced
    if ids is None or len(np.unique(ids)) < 2:
        return []
    out["label_issues"] = _best_label_issues(ids, probs, rows, ids_v, val_probs, vrows,
                                             out["linear"].get("val"))
    if out["label_issues"] is not None:
        return []
    if len(ids) < MIN_LABEL_ROWS:
        return [f"label check: {len(ids)} training rows, fewer than {MIN_LABEL_ROWS}"]
    if probs is None:
        return ["label check: a class has fewer than 2 rows for cross-validation"]
    return ["label check: needs cleanlab (pip install cleanlab) and probabilities for every "
            "class"]


def _reduced(x2: np.ndarray, xv2: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """At most MAX_FEATURES columns, the highest-variance ones, as float64: a cost bound for
    the linear model that keeps the columns carrying the signal (on images the varying
    pixels, not the near-constant border)."""
    x2 = x2.astype(np.float64)
    xv2 = None if xv2 is None else xv2.astype(np.float64)
    if x2.shape[1] <= MAX_FEATURES:
        return x2, xv2
    keep = np.sort(np.argsort(x2.var(0), kind="stable")[::-1][:MAX_FEATURES])
    return x2[:, keep], None if xv2 is None else xv2[:, keep]


def _best_label_issues(ids, probs, rows, ids_v, val_probs, vrows,
                       linear_val: float | None) -> dict | None:
    """Label issues of the training labels from the linear model's cross-validated
    probabilities; when the trained model is clearly better out of sample (a boundary the
    linear model cannot draw), from the trained model's probabilities on validation.
    `worst` holds row numbers of that split ("train" or "validation")."""
    if len(ids) < MIN_LABEL_ROWS:
        return None  # too few rows for confident learning to tell noise from chance
    train = label_issues(ids, probs) if probs is not None else None
    val = None
    if val_probs is not None and ids_v is not None and len(val_probs) == len(ids_v):
        val = label_issues(ids_v, np.asarray(val_probs, dtype=np.float64))
    # both accuracies on the validation labels: the trained model must clearly beat the
    # linear model for its probabilities to be the better judge
    if val is not None and (train is None or linear_val is None or
                            val["accuracy_of_probs"] > linear_val + 0.1):
        split, split_rows, best = "validation", vrows, val
    elif train is not None:
        split, split_rows, best = "train", rows, train
    else:
        return None
    return {**best, "split": split, "worst": [int(split_rows[i]) for i in best["worst"]]}


def profile_rows(n: int, seed: int = 0) -> np.ndarray:
    """The rows `profile_data` samples from a split of `n` rows (for `val_probs`)."""
    return _sample(n, seed)
