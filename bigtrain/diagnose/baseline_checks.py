"""Why a model is poor, from the run record's data profile and how the run ended: features
off the standard scale, likely label errors, train/validation shift, a loss that does not fit
the labels, a NaN stop, a model below the majority class or a linear model on the same
features, and one stuck at the majority class's accuracy on imbalanced classes.

Impacts rank the findings (bigtrain.diagnose.findings.Finding.impact): a cause in the data
or the set-up ranks above the symptoms it produces (below-baseline accuracy, overfitting).

Example:
    from bigtrain.diagnose.baseline_checks import check_profile
    findings = check_profile(record.data_profile, record.history, stop=record.stop)
"""
from __future__ import annotations

import math

from bigtrain.diagnose.findings import Finding
from bigtrain.diagnose.label_checks import MODERATE_IMBALANCE
from bigtrain.diagnose.quality_checks import ACCURACY_KEYS

UNSCALED_RMS = (0.02, 20.0)  # typical feature size sqrt(mean^2 + std^2) outside this range
SHIFT_SMD = 1.0              # validation mean this many training stds away: shifted
LABEL_ISSUE_SHARE = 0.10     # likely label errors above this share of the samples
LABEL_JUDGE_ACCURACY = 0.70  # below it, a judge's flags may be its own errors (info only)
UNRELATED_GAIN = 0.10       # accuracy within this share of the way from chance to 1: chance
UNRELATED_MODEL_GAIN = 0.15  # the same for the trained model's best validation accuracy
LABEL_VAL_GAIN = 0.10        # linear accuracy this much higher on validation labels: noise
BASELINE_MARGIN = 0.03       # accuracy this far below the majority class is below it
BASELINE_GAP = 0.05          # at least this far below the linear model is below it
STUCK_GAIN = 0.10            # accuracy within this share of the way from the majority to 1
CLASS_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy",
                "binary_crossentropy", "categorical_focal_crossentropy")
REGRESSION_LOSSES = ("mse", "mean_squared_error", "mae", "mean_absolute_error", "huber",
                     "log_cosh", "mean_squared_logarithmic_error")

#: how much a data check's finding explains a poor run (its cause ranks above symptoms)
DATA_IMPACT = {"label_leakage": 0.95, "nan_values": 0.95, "one_hot_labels": 0.9,
               "train_test_mismatch": 0.9, "train_test_overlap": 0.9,
               "label_out_of_range": 0.8, "feature_scale": 0.85, "class_imbalance": 0.84,
               "duplicate_rows": 0.2, "duplicate_features": 0.1}

NORMALIZE = ("norm = Normalization(); norm.adapt(x_train); then make norm the model's first "
             "layer (or standardize x with the training mean/std before fit)")


def _data_findings(profile: dict) -> list[Finding]:
    out = []
    for d in profile.get("data_findings", []):
        impact = DATA_IMPACT.get(d["kind"], 0.1) * (0.4 if d["severity"] == "info" else 1.0)
        if d["kind"] == "train_test_overlap" and d["severity"] != "error":
            impact = 0.3  # under 5 % of the rows: it cannot explain much of a score
        if d["kind"] == "feature_scale":
            d = {**d, "advice": NORMALIZE}
        if d["kind"] == "train_test_overlap":
            d = {**d, "kind": "split_overlap", "evidence": d["evidence"].replace(
                "test rows", "validation rows").replace("training set", "training data")}
        out.append(Finding(d["kind"], d["severity"], d["evidence"], d["advice"], impact))
    return out


def _unscaled(profile: dict, normalized: bool) -> list[Finding]:
    sc = profile.get("scale")
    if not sc or normalized or sc["std_ratio"] >= 100.0:
        return []  # uneven scales are data_checks' feature_scale
    lo, hi = UNSCALED_RMS
    if lo < sc["median_rms"] < hi:
        return []
    return [Finding("unscaled_features", "warning",
                    f"features are far from a standard scale: typical |mean| "
                    f"{sc['median_abs_mean']:.3g}, typical std {sc['median_std']:.3g} "
                    f"(standardized features have mean 0, std 1)", NORMALIZE, 0.88)]


def _shift(profile: dict) -> list[Finding]:
    sh = profile.get("shift")
    if not sh or sh["max_mean_shift"] < SHIFT_SMD:
        return []
    return [Finding("train_val_shift", "warning",
                    f"validation data differ from training data: feature {sh['feature']}'s "
                    f"mean moved {sh['max_mean_shift']:.2f} training stds "
                    f"({sh['features_shifted']} features moved > 0.5 std)",
                    "split train and validation from the same shuffled data (e.g. "
                    "sklearn.model_selection.train_test_split(x, y, stratify=y)), or train on "
                    "data like what the model will see", 0.8)]


def _skipped(profile: dict) -> list[Finding]:
    """Checks the profile could not run: a missing finding there means "not checked"."""
    why = profile.get("skipped") or []
    if not why:
        return []
    return [Finding("checks_skipped", "info", "not checked: " + "; ".join(why),
                    "fix what each line names to get these checks", 0.05)]


def _double_softmax(profile: dict) -> list[Finding]:
    """from_logits=True on a softmax output: the loss applies softmax a second time."""
    if not profile.get("loss_reads_probabilities"):
        return []
    c = profile.get("classes") or profile.get("output_units") or 2
    floor = math.log(math.e + c - 1) - 1  # softmax of a one-hot-like probability row
    return [Finding("wrong_loss", "error",
                    f"the loss {profile.get('loss')!r} reads the model's outputs as logits "
                    "(from_logits=True), but the last layer already outputs softmax "
                    "probabilities: the loss applies a second softmax, which squashes every "
                    f"prediction towards 1/{c}, so the loss cannot fall below {floor:.3g} and "
                    "the gradients shrink as the model improves",
                    "drop from_logits=True (compile(loss='sparse_categorical_crossentropy')), "
                    "or keep it and give the last layer no activation: Dense(classes)", 0.92)]


def _wrong_loss(profile: dict) -> list[Finding]:
    if profile.get("loss_reads_probabilities"):
        return _double_softmax(profile)
    loss, task, classes = profile.get("loss"), profile.get("task"), profile.get("classes")
    if loss is None or task is None:
        return []
    if task == "classification" and loss in REGRESSION_LOSSES and (classes or 0) >= 2:
        fix = ("loss='sparse_categorical_crossentropy' with Dense({c}) (softmax) output"
               .format(c=classes))
    elif task == "classification" and loss == "binary_crossentropy" and (classes or 0) > 2:
        fix = f"loss='sparse_categorical_crossentropy' with a Dense({classes}) output"
    elif task == "regression" and loss in CLASS_LOSSES:
        fix = "loss='mse' with a Dense(1) output and no activation"
    else:
        return []
    kind = f"{classes} classes" if task == "classification" else "continuous values"
    return [Finding("wrong_loss", "error",
                    f"the labels are {kind} but the loss is {loss!r}",
                    f"compile(..., {fix})", 0.92)]


def _label_noise(profile: dict) -> list[Finding]:
    li = profile.get("label_issues")
    if not li or li["share"] < LABEL_ISSUE_SHARE:
        return []
    rows = ", ".join(map(str, li["worst"][:5]))
    evidence = (f"cleanlab flags {li['share']:.0%} of the {li['split']} labels as likely wrong "
                f"(confident learning on out-of-sample probabilities); worst rows: {rows}")
    fix = ("relabel or drop the flagged rows (cleanlab.filter.find_label_issues lists them "
           "all), or train with label_smoothing in the loss")
    if _judge_trusted(profile, li):
        return [Finding("label_noise", "warning", evidence, fix, 0.6)]
    # confident learning cannot tell a wrong label from a row its weak judge gets wrong: on a
    # hard task with clean labels it flags about as many rows as the judge misclassifies
    return [Finding("label_noise", "info",
                    f"{evidence}; but the model that judged them is right on only "
                    f"{li.get('accuracy_of_probs', 0.0):.0%} of the rows out of sample, so "
                    f"most flags may be hard rows rather than wrong labels",
                    f"look at a few flagged rows before acting; if their labels are wrong: "
                    f"{fix}", 0.6)]


def _near_chance(acc: float | None, majority: float | None, gain: float) -> bool:
    return acc is not None and majority is not None and acc <= majority + gain * (1 - majority)


def _unrelated_labels(profile: dict, history: dict) -> list[Finding]:
    """Labels that nothing predicts: a linear model scores at chance on held-out training
    labels (cross-validated) and on the validation labels, and so does the trained model.
    That is what labels shuffled apart from their rows (or a wrong label column) look like."""
    if profile.get("task") != "classification":
        return []
    li, lin = profile.get("label_issues") or {}, profile.get("linear") or {}
    judged = li.get("accuracy_of_probs") if li.get("split") == "train" else None
    major, val_major = profile.get("majority_share"), profile.get("val_majority_share")
    if val_major is not None:  # no-skill on validation: the best constant guess there
        val_major = max(val_major, profile.get("val_top_share", 0.0))
    model = _best(history, [f"val_{k}" for k in ACCURACY_KEYS])
    if judged is None and lin.get("val") is None:
        return []
    if (judged is not None and not _near_chance(judged, major, UNRELATED_GAIN)) or (
            lin.get("val") is not None and not _near_chance(lin["val"], val_major,
                                                            UNRELATED_GAIN)) or (
            model is not None and not _near_chance(model[1], val_major, UNRELATED_MODEL_GAIN)):
        return []
    seen = [f"a logistic regression predicts held-out training labels {judged:.0%} right"
            if judged is not None else None,
            f"trained on them it scores {lin['val']:.0%} on the validation labels"
            if lin.get("val") is not None else None,
            f"this model's best {model[0]} is {model[1]:.0%}" if model else None,
            f"the most common class alone scores {major:.0%}" if major is not None else None]
    return [Finding("label_noise", "error",
                    "the training labels do not follow from the inputs, as if shuffled: "
                    + ", ".join(s for s in seen if s),
                    "check that y_train still lines up with x_train (a shuffle or sort applied "
                    "to x or y alone, a wrong label column): compare a few rows by eye, e.g. "
                    "print(x_train[:3], y_train[:3])", 0.93)]


def _judge_trusted(profile: dict, li: dict) -> bool:
    """Whether the probabilities that flagged the labels are good enough for their flags to
    mean wrong labels: the judge is right on most rows out of sample, or (training labels)
    the linear model scores clearly better on the validation labels than on the training
    labels it learned from, which is what noise in the training labels alone does."""
    judged = li.get("accuracy_of_probs")
    if judged is None or judged >= LABEL_JUDGE_ACCURACY:
        return True
    val = (profile.get("linear") or {}).get("val")
    return li["split"] == "train" and val is not None and val >= judged + LABEL_VAL_GAIN


def _labels(profile: dict, history: dict) -> list[Finding]:
    """Labels unrelated to the inputs explain cleanlab's flags: one finding, not two."""
    return _unrelated_labels(profile, history) or _label_noise(profile)


def _best(history: dict, keys) -> tuple[str, float] | None:
    for k in keys:
        vals = [v for v in history.get(k, []) if math.isfinite(v)]
        if vals:
            return k, max(vals)
    return None


def _baselines(profile: dict, history: dict) -> list[Finding]:
    out = []
    if profile.get("task") == "classification":
        got = _best(history, [f"val_{k}" for k in ACCURACY_KEYS])
        if got is None:
            return []
        key, acc = got
        major = profile.get("val_majority_share")
        if major is not None and acc < major - BASELINE_MARGIN:
            out.append(Finding("below_majority", "warning",
                               f"best {key} {acc:.3f} is below always predicting the most "
                               f"common class ({major:.3f})",
                               "fix the cause ranked above it, then see which classes it "
                               "predicts: sklearn.metrics.classification_report(y_val, "
                               "model.predict(x_val).argmax(1))", 0.4))
        lin = (profile.get("linear") or {}).get("val")
        # a model well short of the linear model's gain over the majority class is below it
        margin = max(BASELINE_GAP, 0.2 * (lin - (major or 0.0))) if lin is not None else 0
        if lin is not None and acc < lin - margin:
            out.append(Finding("below_baseline", "warning",
                               f"best {key} {acc:.3f} is below a logistic regression on the "
                               f"same features ({lin:.3f})",
                               "train longer or with more capacity (more units / layers), at a "
                               "learning rate that keeps loss falling; or ship the linear "
                               "model", 0.35))
    elif profile.get("task") == "regression" and profile.get("loss") in ("mse",
                                                                          "mean_squared_error"):
        vals = [v for v in history.get("val_loss", []) if math.isfinite(v)]
        mean_mse = profile.get("mean_baseline_mse")
        if vals and mean_mse and min(vals) > mean_mse * (1 + BASELINE_MARGIN):
            out.append(Finding("below_mean", "warning",
                               f"best val_loss {min(vals):.4g} is worse than predicting the "
                               f"training mean ({mean_mse:.4g})",
                               "fix the cause ranked above it; standardize the targets "
                               "(y - y.mean()) / y.std() and undo it on predictions", 0.4))
    return out


def _stuck_on_majority(profile: dict, history: dict) -> list[Finding]:
    """Imbalanced classes (MODERATE_IMBALANCE or more) and a model that scores what always
    answering the most common class scores, while a logistic regression on the same features
    does clearly better: the model learned the class frequencies, not the inputs, and its
    accuracy looks good only because the classes are uneven."""
    counts = profile.get("class_counts") or []
    present = [c for c in counts if c > 0]
    if profile.get("task") != "classification" or len(present) < 2 or \
            max(present) / min(present) < MODERATE_IMBALANCE:
        return []
    got = _best(history, [f"val_{k}" for k in ACCURACY_KEYS])
    major, lin = profile.get("val_majority_share"), (profile.get("linear") or {}).get("val")
    if got is None or major is None or lin is None:
        return []
    key, acc = got
    if not major - BASELINE_MARGIN <= acc <= major + STUCK_GAIN * (1 - major) or \
            lin < major + max(BASELINE_GAP, 2 * STUCK_GAIN * (1 - major)):
        return []
    big, small = counts.index(max(present)), counts.index(min(present))
    n = sum(present)
    weights = ", ".join(f"{c}: {n / (len(present) * k):.2g}" for c, k in enumerate(counts) if k)
    return [Finding("class_imbalance", "warning",
                    f"class {big} has {max(present) / min(present):.1f}x the samples of class "
                    f"{small}, and the model's best {key} {acc:.3f} is what always answering "
                    f"class {big} scores ({major:.3f}) while a logistic regression on the same "
                    f"features scores {lin:.3f}: the model learned the class frequencies, not "
                    "the inputs",
                    f"weight the rare classes: fit(..., class_weight={{{weights}}}) (or "
                    "oversample them), fix any cause ranked above, and judge with per-class "
                    "recall: sklearn.metrics.classification_report", 0.845)]


def _nan_stop(stop: dict | None, step_losses: list, findings: list[Finding]) -> list[Finding]:
    """A NaN stop on clean, standard-scaled data: the step size is the suspect."""
    if not stop or stop.get("reason") != "nan_loss":
        return []
    if any(f.kind in ("unscaled_features", "feature_scale", "nan_values", "lr_too_high",
                      "exploding_gradients", "bad_init", "nan_inputs") for f in findings):
        return []
    step = next((i for i, v in enumerate(step_losses) if not math.isfinite(v)), None)
    where = f" at step {step + 1} of epoch {stop['epoch'] + 1}" if step is not None else ""
    return [Finding("lr_too_high", "error",
                    f"the loss became NaN{where} on finite, standard-scaled inputs: the "
                    "updates overshoot",
                    "lower the learning rate 10x and clip: "
                    "optimizer=Adam(learning_rate=3e-4, clipnorm=1.0)", 0.8)]


def check_profile(profile: dict, history: dict, *, stop: dict | None = None,
                  step_losses: list | None = None, prior: list | None = None) -> list[Finding]:
    """Quality findings from a run's data profile, history and stop (unsorted); `prior`
    are findings already made (a NaN stop they explain needs no other cause)."""
    prior = list(prior or [])
    if not profile:
        return _nan_stop(stop, step_losses or [], prior)
    out = (_data_findings(profile) + _unscaled(profile, profile.get("normalized_in_model",
                                                                     False))
           + _shift(profile) + _wrong_loss(profile) + _labels(profile, history)
           + _stuck_on_majority(profile, history) + _baselines(profile, history)
           + _skipped(profile))
    return out + _nan_stop(stop, step_losses or [], out + prior)
