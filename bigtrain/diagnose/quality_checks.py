"""Whether a run learns: findings from its Keras-style per-epoch history.

Example:
    from bigtrain.diagnose.quality_checks import check_history
    check_history({"loss": [2.3, 2.3, 2.3], "accuracy": [0.1, 0.1, 0.1]}, num_classes=10)
"""
from __future__ import annotations

import math

from bigtrain.diagnose.findings import Finding

DIVERGE_RATIO = 1.3        # final loss / best loss that counts as diverging
OVERFIT_RISE = 1.10        # final val_loss / best val_loss that counts as overfitting
STALL_IMPROVEMENT = 0.02   # relative loss drop over the run below which training stalled
CHANCE_MARGIN = 1.2        # accuracy below this many times chance is "near chance"
MIN_EPOCHS = 3             # trends need at least this many epochs
ACCURACY_KEYS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _nonfinite(history: dict) -> list[Finding]:
    for key in ("loss", "val_loss"):
        bad = [i for i, v in enumerate(history.get(key, [])) if not math.isfinite(v)]
        if bad:
            return [Finding("nan_loss", "error",
                            f"{key} is {history[key][bad[0]]} from epoch {bad[0] + 1}",
                            "lower the learning rate 10x and clip gradients: optimizer="
                            "Adam(learning_rate=3e-4, clipnorm=1.0); "
                            "if it persists check the data for NaN/Inf, or use bf16 "
                            "instead of fp16", 0.5)]
    return []


def _diverging(loss: list[float]) -> list[Finding]:
    if len(loss) < MIN_EPOCHS or not all(map(math.isfinite, loss)):
        return []
    best = min(range(len(loss)), key=loss.__getitem__)
    if best == len(loss) - 1 or loss[-1] < DIVERGE_RATIO * loss[best]:
        return []
    return [Finding("divergence", "error",
                    f"training loss rose from {loss[best]:.4g} (epoch {best + 1}) to "
                    f"{loss[-1]:.4g} (epoch {len(loss)}): {_fmt(loss)}",
                    "lower the learning rate 3-10x: optimizer=Adam(learning_rate=3e-4, "
                    "clipnorm=1.0)", 0.5)]


def _overfitting(loss: list[float], val: list[float]) -> list[Finding]:
    n = min(len(loss), len(val))
    if n < MIN_EPOCHS or not all(map(math.isfinite, loss[:n] + val[:n])):
        return []
    best = min(range(n), key=val.__getitem__)
    gap_best, gap_end = val[best] - loss[best], val[n - 1] - loss[n - 1]
    if val[n - 1] < OVERFIT_RISE * val[best] or loss[n - 1] >= loss[best] or gap_end <= gap_best:
        return []
    return [Finding("overfitting", "warning",
                    f"val_loss rose from {val[best]:.4g} (epoch {best + 1}) to "
                    f"{val[n - 1]:.4g} while loss fell to {loss[n - 1]:.4g}; the gap grew "
                    f"from {gap_best:.3g} to {gap_end:.3g}",
                    f"stop at epoch {best + 1}: EarlyStopping(monitor='val_loss', patience=2, "
                    "restore_best_weights=True); add Dropout(0.3) or weight decay for more",
                    0.45)]


def _underfitting(history: dict, num_classes: int | None) -> list[Finding]:
    loss = history.get("loss", [])
    out = []
    if len(loss) >= MIN_EPOCHS and all(map(math.isfinite, loss)) and loss[0] != 0:
        drop = (loss[0] - loss[-1]) / abs(loss[0])
        if 0 <= drop < STALL_IMPROVEMENT:
            out.append(Finding("underfitting", "warning",
                               f"training loss moved {drop:.1%} in {len(loss)} epochs: "
                               f"{_fmt(loss)}",
                               "raise the learning rate 10x (or test rates: bigtrain doctor "
                               "RUN_DIR --lr-test), and check that the labels match the inputs",
                               0.3))
    acc_key = next((k for k in ACCURACY_KEYS if history.get(k)), None)
    if acc_key and num_classes and num_classes >= 2 and len(history[acc_key]) >= MIN_EPOCHS:
        chance, acc = 1.0 / num_classes, history[acc_key][-1]
        if acc <= CHANCE_MARGIN * chance:
            out.append(Finding("near_chance", "warning",
                               f"{acc_key} is {acc:.3f} after {len(history[acc_key])} epochs; "
                               f"chance with {num_classes} classes is {chance:.3f}",
                               "check the labels and the output layer (units = classes, "
                               "softmax + categorical loss), then raise the learning rate", 0.3))
    return out


def check_history(history: dict, *, num_classes: int | None = None) -> list[Finding]:
    """Quality findings: NaN/Inf loss, divergence, overfitting, underfitting.

    Args:
        history: Keras-style per-epoch lists ("loss", "val_loss", "accuracy", ...).
        num_classes: classes of a classification task (enables the near-chance check).

    Example:
        >>> [f.kind for f in check_history({"loss": [1.0, float("nan")]})]
        ['nan_loss']
    """
    nan = _nonfinite(history)
    if nan:
        return nan  # trends of a NaN run mean nothing
    loss, val = list(history.get("loss", [])), list(history.get("val_loss", []))
    return _diverging(loss) + _overfitting(loss, val) + _underfitting(history, num_classes)
