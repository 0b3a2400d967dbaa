"""Keras's loss functions as torch code, and the tables that name them.

Each function takes (y_true, y_pred) as Keras's does and returns one loss per sample (or
per position), unreduced: `LossSpec` (loss_spec.py) weighs and reduces them, and
metrics_keras.py reuses the cross-entropies as metrics. They live apart from LossSpec and
from the name lookup (losses.py) so that the arithmetic, which Keras parity tests pin
down, reads on its own.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

EPSILON = 1e-7  # Keras's clip for probabilities


def _class_ids(y_true, y_pred) -> bool:
    """Integer targets without the prediction's class axis are class ids; a target shaped
    like the prediction is one-hot (or soft) whatever its dtype, as in Keras."""
    return not y_true.is_floating_point() and tuple(y_true.shape) != tuple(y_pred.shape)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    if _class_ids(y_true, y_pred):  # one-hot labels stored compactly as class ids
        if not label_smoothing:
            return sparse_categorical_crossentropy(y_true, y_pred, from_logits, axis=axis)
        ids = y_true.reshape(y_pred.movedim(axis, -1).shape[:-1]).long()
        y_true = F.one_hot(ids, y_pred.shape[axis]).movedim(-1, axis)
    y_true = y_true.to(y_pred.dtype)  # integer one-hot rows (np.eye(C, dtype=int)[y])
    if label_smoothing:  # Keras: towards 1 / classes, the classes read from the last axis
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / y_true.shape[-1]
    if from_logits:
        if y_pred.dim() == 2 and axis in (-1, 1):  # one fused kernel for the common (B, C)
            return F.cross_entropy(y_pred, y_true, reduction="none")
        return -(y_true * torch.log_softmax(y_pred, dim=axis)).sum(axis)
    p = y_pred / y_pred.sum(axis, keepdim=True)
    return -(y_true * torch.log(p.clamp(EPSILON, 1 - EPSILON))).sum(axis)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None,
                                    axis=-1):
    """Per-position loss; positions whose label is `ignore_class` give 0 (`LossSpec` leaves
    them out of the mean, as Keras)."""
    y_pred = y_pred.movedim(axis, -1)  # the class axis last
    target = y_true.reshape(y_pred.shape[:-1]).long()
    valid = None if ignore_class is None else target != ignore_class
    if valid is not None:
        target = torch.where(valid, target, 0)
    logits = y_pred if from_logits else torch.log(y_pred.clamp(EPSILON, 1 - EPSILON))
    per = F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none"
                          ).reshape(target.shape)
    return per if valid is None else torch.where(valid, per, 0.0)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    y_true = y_true.reshape(y_pred.shape).to(y_pred.dtype)
    if label_smoothing:  # Keras: towards 0.5
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        per = F.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none")
    else:
        per = F.binary_cross_entropy(y_pred.clamp(EPSILON, 1 - EPSILON), y_true, reduction="none")
    return per.mean(axis) if per.dim() > 1 else per


def mean_squared_error(y_true, y_pred, from_logits=False):
    d = (y_pred - y_true.reshape(y_pred.shape)) ** 2
    return d.mean(-1) if d.dim() > 1 else d


def mean_absolute_error(y_true, y_pred, from_logits=False):
    d = (y_pred - y_true.reshape(y_pred.shape)).abs()
    return d.mean(-1) if d.dim() > 1 else d


def huber(y_true, y_pred, from_logits=False, delta=1.0):
    """Keras's Huber: 0.5 e^2 where |e| <= delta, else delta |e| - 0.5 delta^2."""
    e = y_pred - y_true.reshape(y_pred.shape).to(y_pred.dtype)
    a = e.abs()
    per = torch.where(a <= delta, 0.5 * e * e, delta * a - 0.5 * delta * delta)
    return per.mean(-1) if per.dim() > 1 else per


def cosine_similarity(y_true, y_pred, from_logits=False, axis=-1):
    """Keras's: -sum(l2_normalize(y_true) * l2_normalize(y_pred)) along `axis`."""
    y_true = y_true.reshape(y_pred.shape).to(y_pred.dtype)

    def unit(t):  # Keras's normalize: x * min(rsqrt(sum x^2), 1 / epsilon)
        return t * torch.rsqrt((t * t).sum(axis, keepdim=True)).clamp(max=1 / EPSILON)
    return -(unit(y_true) * unit(y_pred)).sum(axis)


def _same_shape(y_true, y_pred):
    """Targets in the prediction's shape and dtype, as Keras's loss wrapper gives them."""
    return y_true.reshape(y_pred.shape).to(y_pred.dtype)


def _mean_last(per):
    return per.mean(-1) if per.dim() > 1 else per


def mean_absolute_percentage_error(y_true, y_pred, from_logits=False):
    """Keras's: 100 |t - p| / max(|t|, epsilon), averaged over the last axis."""
    y_true = _same_shape(y_true, y_pred)
    eps = y_pred.new_tensor(EPSILON)
    return 100.0 * _mean_last(((y_true - y_pred) / torch.maximum(y_true.abs(), eps)).abs())


def mean_squared_logarithmic_error(y_true, y_pred, from_logits=False):
    """Keras's: (log(max(p, eps) + 1) - log(max(t, eps) + 1))^2; negatives read as eps."""
    y_true = _same_shape(y_true, y_pred)
    eps = y_pred.new_tensor(EPSILON)
    d = torch.log(torch.maximum(y_pred, eps) + 1.0) - torch.log(torch.maximum(y_true, eps) + 1.0)
    return _mean_last(d * d)


def kl_divergence(y_true, y_pred, from_logits=False):
    """Keras's: sum t log(t / p) over the last axis, both clipped to [epsilon, 1]."""
    y_true = _same_shape(y_true, y_pred).clip(EPSILON, 1)
    y_pred = y_pred.clip(EPSILON, 1)
    per = y_true * torch.log(y_true / y_pred)
    return per.sum(-1) if per.dim() > 1 else per


def poisson(y_true, y_pred, from_logits=False):
    """Keras's: p - t log(p + epsilon)."""
    y_true = _same_shape(y_true, y_pred)
    return _mean_last(y_pred - y_true * torch.log(y_pred + EPSILON))


def log_cosh(y_true, y_pred, from_logits=False):
    """Keras's log(cosh(e)) as e + softplus(-2e) - log 2, which stays finite for large e."""
    e = y_pred - _same_shape(y_true, y_pred)
    return _mean_last(e + F.softplus(e * -2.0) - math.log(2.0))


def _signs(y_true, y_pred):
    """Keras's hinge labels: 0/1 labels become -1/1 when every label of the batch is 0 or
    1; other labels (-1/1) stay as they are."""
    y_true = _same_shape(y_true, y_pred)
    binary = ((y_true == 0) | (y_true == 1)).all()
    return torch.where(binary, 2.0 * y_true - 1.0, y_true)


def _positive(x):
    """max(x, 0) as Keras's torch backend takes it (torch.maximum: a tie splits the
    gradient), so that training follows Keras's to the bit where it can."""
    return torch.maximum(x, x.new_zeros(()))


def hinge(y_true, y_pred, from_logits=False):
    """Keras's: max(1 - t p, 0), the labels -1/1 (or 0/1)."""
    return _mean_last(_positive(1.0 - _signs(y_true, y_pred) * y_pred))


def squared_hinge(y_true, y_pred, from_logits=False):
    """Keras's: max(1 - t p, 0)^2, the labels -1/1 (or 0/1)."""
    m = _positive(1.0 - _signs(y_true, y_pred) * y_pred)
    return _mean_last(m * m)


def categorical_hinge(y_true, y_pred, from_logits=False):
    """Keras's: max(max((1 - t) p) - sum(t p) + 1, 0) over the class axis, one-hot t."""
    y_true = _same_shape(y_true, y_pred)
    if y_pred.dim() == 1:  # one class column: (B,) -> (B, 1)
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    pos = (y_true * y_pred).sum(-1)
    neg = ((1.0 - y_true) * y_pred).amax(-1)
    return _positive(neg - pos + 1.0)


LOSSES: dict[str, Callable] = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mse": mean_squared_error, "mae": mean_absolute_error,
    "huber": huber, "cosine_similarity": cosine_similarity,
    "mape": mean_absolute_percentage_error, "msle": mean_squared_logarithmic_error,
    "kl_divergence": kl_divergence, "poisson": poisson, "log_cosh": log_cosh,
    "hinge": hinge, "squared_hinge": squared_hinge, "categorical_hinge": categorical_hinge,
}
#: Keras's other names for the losses above -> bigtrain's name (the LossSpec's name)
ALIASES = {"mean_squared_error": "mse", "MSE": "mse", "mean_absolute_error": "mae",
           "MAE": "mae", "bce": "binary_crossentropy", "BCE": "binary_crossentropy",
           "mean_absolute_percentage_error": "mape", "MAPE": "mape",
           "mean_squared_logarithmic_error": "msle", "MSLE": "msle",
           "kld": "kl_divergence", "KLD": "kl_divergence",
           "kullback_leibler_divergence": "kl_divergence", "logcosh": "log_cosh"}
LOSSES.update({alias: LOSSES[name] for alias, name in ALIASES.items()})
#: losses that can read logits, and the activation they absorb
LOGIT_LOSSES = {"categorical_crossentropy": "softmax", "sparse_categorical_crossentropy": "softmax",
                "binary_crossentropy": "sigmoid"}
#: Keras's loss classes that become bigtrain's own loss of this name
KERAS_TWINS = {"CategoricalCrossentropy": "categorical_crossentropy",
               "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
               "BinaryCrossentropy": "binary_crossentropy", "MeanSquaredError": "mse",
               "MeanAbsoluteError": "mae", "Huber": "huber",
               "CosineSimilarity": "cosine_similarity",
               "MeanAbsolutePercentageError": "mape", "MeanSquaredLogarithmicError": "msle",
               "KLDivergence": "kl_divergence", "Poisson": "poisson", "LogCosh": "log_cosh",
               "Hinge": "hinge", "SquaredHinge": "squared_hinge",
               "CategoricalHinge": "categorical_hinge"}
