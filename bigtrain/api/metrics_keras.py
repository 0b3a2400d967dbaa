"""The common Keras metric classes, with Keras's constructor arguments and Keras's math.

Each keeps sums in its `state` tensor and reads its result from summed state only, so ranks
all-reduce the states and get the metric over the global batch (see `metrics.Metric`):
Precision is tp / (tp + fp) from summed tp and fp, RMSE is sqrt(sum of squares / count).

Example:
    model.compile(optimizer="adam", loss="binary_crossentropy",
                  metrics=["accuracy", Precision(), Recall(), AUC(curve="PR")])
"""
from __future__ import annotations

import math

import torch

from bigtrain.api import losses
from bigtrain.api.metrics_base import (Accuracy, Metric, _dense_targets, _target_ids,
                                       value_weights)

EPSILON = 1e-7  # Keras's backend.epsilon()
NEG_INF = -1e10  # Keras's stand-in for -inf (the default threshold with top_k)


class _Sums(Metric):
    """A metric whose state is `size` sums, added to in place (no host sample count)."""

    def reset(self, device) -> None:
        self._state = torch.zeros(self.size, dtype=torch.float64, device=device)

    @property
    def state(self) -> torch.Tensor:
        return self._state


class _MeanOf(Metric):
    """Keras's MeanMetricWrapper: the mean over samples of a per-sample value. Every sample
    has as many values as the next, so this is the mean over all values: sum / count."""

    batchable = True

    def values(self, y_true, y_pred) -> torch.Tensor:
        raise NotImplementedError

    def update(self, y_true, y_pred, sample_weight=None):
        v = self.values(y_true, y_pred)
        if sample_weight is not None:
            self._add_weighted(v, sample_weight)
        else:
            self._add(v.sum(dtype=torch.float64), v.numel())


def _same_shape(y_true, y_pred):
    """Targets as float values shaped like the prediction (class ids one-hot first)."""
    return _dense_targets(y_true, y_pred).reshape(y_pred.shape).to(y_pred.dtype)


class MeanSquaredError(_MeanOf):
    batchable = True

    def __init__(self, name: str = "mean_squared_error"):
        self.name = name

    def values(self, y_true, y_pred):
        d = y_pred - _same_shape(y_true, y_pred)
        return d * d


class RootMeanSquaredError(MeanSquaredError):
    """sqrt of the mean squared error over every value seen (not a mean of batch RMSEs)."""

    batchable = True

    def __init__(self, name: str = "root_mean_squared_error"):
        self.name = name

    def result(self, state=None):
        return math.sqrt(super().result(state))


class MeanAbsoluteError(_MeanOf):
    batchable = True

    def __init__(self, name: str = "mean_absolute_error"):
        self.name = name

    def values(self, y_true, y_pred):
        return (y_pred - _same_shape(y_true, y_pred)).abs()


class MeanAbsolutePercentageError(_MeanOf):
    """100 |y - p| / max(|y|, 1e-7), as Keras."""

    batchable = True

    def __init__(self, name: str = "mean_absolute_percentage_error"):
        self.name = name

    def values(self, y_true, y_pred):
        y = _same_shape(y_true, y_pred)
        return 100.0 * ((y - y_pred) / y.abs().clamp(min=EPSILON)).abs()


class BinaryAccuracy(_MeanOf):
    """Share of values where (prediction > threshold) equals the target (Keras: exact 0/1)."""

    batchable = True

    def __init__(self, threshold: float = 0.5, name: str = "binary_accuracy"):
        self.threshold, self.name = threshold, name

    def values(self, y_true, y_pred):
        hit = (y_pred > self.threshold).to(y_pred.dtype) == _same_shape(y_true, y_pred)
        return hit.to(torch.float32)


class CategoricalAccuracy(Accuracy):
    """argmax of the prediction equals argmax of the one-hot target."""

    batchable = True

    def __init__(self, name: str = "categorical_accuracy"):
        super().__init__("categorical", name)


class SparseCategoricalAccuracy(Accuracy):
    """argmax of the prediction equals the class id."""

    batchable = True

    def __init__(self, name: str = "sparse_categorical_accuracy"):
        super().__init__("sparse", name)


class SparseTopKCategoricalAccuracy(Metric):
    """The class id's score is at least the k-th highest score (Keras's in_top_k: ties count)."""

    batchable = True

    def __init__(self, k: int = 5, name: str = "sparse_top_k_categorical_accuracy",
                 from_sorted_ids: bool = False):
        if from_sorted_ids:
            raise ValueError("SparseTopKCategoricalAccuracy(from_sorted_ids=True) is not read "
                             "by bigtrain; give the scores of every class")
        self.k, self.name = k, name

    def reads_scores_only(self, y_true, y_pred) -> bool:
        return True  # a softmax keeps the order of the scores

    def update(self, y_true, y_pred, sample_weight=None):
        scores = y_pred.reshape(-1, y_pred.shape[-1])  # (N, C)
        ids = _target_ids(y_true, y_pred).reshape(-1, 1)  # (N, 1)
        kth = scores.topk(min(self.k, scores.shape[-1]), dim=-1).values[:, -1:]
        hit = scores.gather(1, ids) >= kth
        if sample_weight is not None:  # a weight per sample: hits shaped as the samples
            self._add_weighted(hit.reshape(y_pred.shape[:-1]), sample_weight)
        else:
            self._add(torch.count_nonzero(hit), hit.numel())


class _Crossentropy(_MeanOf):
    batchable = True

    def __init__(self, name, from_logits=False, label_smoothing=0.0, axis=-1):
        if axis != -1:
            raise ValueError(f"{type(self).__name__} reads the class axis last (axis=-1), "
                             f"got axis={axis}")
        self.name, self.from_logits, self.label_smoothing = name, from_logits, label_smoothing


class BinaryCrossentropy(_Crossentropy):
    batchable = True

    def __init__(self, name: str = "binary_crossentropy", from_logits: bool = False,
                 label_smoothing: float = 0.0):
        super().__init__(name, from_logits, label_smoothing)

    def values(self, y_true, y_pred):
        return losses.binary_crossentropy(_same_shape(y_true, y_pred), y_pred,
                                          self.from_logits, self.label_smoothing)


class CategoricalCrossentropy(_Crossentropy):
    batchable = True

    def __init__(self, name: str = "categorical_crossentropy", from_logits: bool = False,
                 label_smoothing: float = 0.0, axis: int = -1):
        super().__init__(name, from_logits, label_smoothing, axis)

    def values(self, y_true, y_pred):
        return losses.categorical_crossentropy(y_true, y_pred, self.from_logits,
                                               self.label_smoothing)


class SparseCategoricalCrossentropy(_Crossentropy):
    batchable = True

    def __init__(self, name: str = "sparse_categorical_crossentropy",
                 from_logits: bool = False, ignore_class: int | None = None, axis: int = -1):
        if ignore_class is not None:
            raise ValueError("SparseCategoricalCrossentropy(ignore_class=...) as a metric is "
                             "not read by bigtrain; pass it to the loss instead")
        super().__init__(name, from_logits, 0.0, axis)

    def values(self, y_true, y_pred):
        return losses.sparse_categorical_crossentropy(y_true, y_pred, self.from_logits)


def _thresholds(thresholds, default: float) -> list[float]:
    if thresholds is None:
        return [default]
    values = [float(t) for t in (thresholds if isinstance(thresholds, (list, tuple))
                                 else [thresholds])]
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise ValueError(f"thresholds must lie in [0, 1], got {thresholds!r}")
    return values


def _one_or_list(values: torch.Tensor):
    """Keras's result: a number for one threshold or average, else one per threshold/class."""
    out = values.tolist()
    return out[0] if len(out) == 1 else out


class _Confusion(_Sums):
    """Counts over every value (flattened) at each threshold, as Keras's
    update_confusion_matrix_variables: a value is predicted positive when it is above the
    threshold, and a target is positive when it is not 0. `top_k` keeps only each row's k
    highest scores; `class_id` reads one column."""

    batchable = True
    counts = ("tp", "fp")  # the sums kept per threshold, in `state` order

    def __init__(self, thresholds=None, top_k=None, class_id=None, name="metric"):
        self.thresholds = _thresholds(thresholds, 0.5 if top_k is None else NEG_INF)
        self.top_k, self.class_id, self.name = top_k, class_id, name
        self.size = 2 * len(self.thresholds)

    def update(self, y_true, y_pred, sample_weight=None):
        y_true = _same_shape(y_true, y_pred)
        # each value counts once, or with its sample's weight (weighted_metrics)
        w = None if sample_weight is None else value_weights(sample_weight, y_pred)
        if self.top_k is not None:  # Keras's _filter_top_k: the rest at -1e10
            idx = y_pred.topk(self.top_k, dim=-1).indices
            keep = torch.zeros_like(y_pred, dtype=torch.bool).scatter_(-1, idx, True)
            y_pred = torch.where(keep, y_pred, NEG_INF)
        if self.class_id is not None:
            y_true, y_pred = y_true[..., self.class_id], y_pred[..., self.class_id]
            w = None if w is None else w[..., self.class_id]
        t = torch.tensor(self.thresholds, dtype=y_pred.dtype, device=y_pred.device)
        above = y_pred.reshape(-1, 1) > t  # (values, thresholds)
        pos = (y_true.reshape(-1, 1) != 0)
        first = above & pos  # tp
        second = (above & ~pos) if self.counts[1] == "fp" else (~above & pos)
        if w is not None:
            first, second = first * w.reshape(-1, 1), second * w.reshape(-1, 1)
        n = len(self.thresholds)
        self._state[:n] += first.sum(0)
        self._state[n:] += second.sum(0)

    def result(self, state=None):
        s = self.state if state is None else state
        n = len(self.thresholds)
        tp, other = s[:n].double(), s[n:].double()
        total = tp + other
        return _one_or_list(torch.where(total > 0, tp / total.clamp(min=1), 0.0))


class Precision(_Confusion):
    """tp / (tp + fp) at each threshold (Keras: 0.5; with top_k, the top k of each row).

    Args:
        thresholds: a float or a list in [0, 1]: one result per threshold.
        top_k: count only each row's k highest scores as predicted positive.
        class_id: read only this column (one class of a multi-label output).
        name: the key in the History and the logs.
    """

    batchable = True
    counts = ("tp", "fp")

    def __init__(self, thresholds=None, top_k=None, class_id=None, name="precision"):
        super().__init__(thresholds, top_k, class_id, name)


class Recall(_Confusion):
    """tp / (tp + fn) at each threshold; arguments as `Precision`."""

    batchable = True
    counts = ("tp", "fn")

    def __init__(self, thresholds=None, top_k=None, class_id=None, name="recall"):
        super().__init__(thresholds, top_k, class_id, name)


class FBetaScore(_Sums):
    """Keras's FBetaScore: per class tp, fp, fn and support summed over samples, then
    (1 + beta^2) P R / (beta^2 P + R), averaged as `average` says.

    Args:
        average: None (one score per class), "micro" (from counts summed over classes),
            "macro" (mean of the class scores) or "weighted" (weighted by support).
        beta: weight of recall against precision.
        threshold: a prediction above it is positive; None: each row's highest score.
        name: the key in the History and the logs.

    The number of classes is read from the first batch (the state grows then: 4 sums per
    class, in the order tp, fp, fn, support).
    """

    batchable = True

    def __init__(self, average=None, beta=1.0, threshold=None, name="fbeta_score"):
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError("average must be None, 'micro', 'macro' or 'weighted', got "
                             f"{average!r}")
        if not isinstance(beta, (int, float)) or beta <= 0:
            raise ValueError(f"beta must be a number > 0, got {beta!r}")
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
        self.average, self.beta, self.threshold, self.name = average, float(beta), threshold, name
        self.size = 0  # 4 * classes, once a batch has shown the classes

    def update(self, y_true, y_pred, sample_weight=None):
        if y_pred.dim() != 2:
            raise ValueError(f"{type(self).__name__} reads (batch, classes) predictions, got "
                             f"shape {tuple(y_pred.shape)}")
        classes = y_pred.shape[-1]
        if self._state.numel() != 4 * classes:
            self.size = 4 * classes
            self._state = torch.zeros(self.size, dtype=torch.float64, device=y_pred.device)
        y_true = _same_shape(y_true, y_pred)
        if self.threshold is None:  # each row's top score (a row of zeros stays negative)
            top = y_pred.max(-1, keepdim=True).values
            pred = (y_pred >= top) & (y_pred.abs() > 1e-9)
        else:
            pred = y_pred > self.threshold
        pred = pred.to(y_pred.dtype)
        sums = torch.stack([pred * y_true, pred * (1 - y_true), (1 - pred) * y_true, y_true])
        if sample_weight is not None:  # (4, B, C) * (B, C): each sample's weight
            sums = sums * value_weights(sample_weight, y_pred)
        self._state += sums.sum(1, dtype=torch.float64).reshape(-1)  # (4, B, C) -> 4 C

    def result(self, state=None):
        s = (self.state if state is None else state).double()
        if not s.numel():
            return 0.0
        tp, fp, fn, support = s.reshape(4, -1)
        if self.average == "micro":  # Keras sums over classes before the ratios
            tp, fp, fn = tp.sum(0, keepdim=True), fp.sum(0, keepdim=True), fn.sum(0, keepdim=True)
        precision = tp / (tp + fp + EPSILON)
        recall = tp / (tp + fn + EPSILON)
        b2 = self.beta ** 2
        score = (1 + b2) * precision * recall / (b2 * precision + recall + EPSILON)
        if self.average is None:  # Keras: one score per class, a list also for one class
            return score.tolist()
        if self.average == "weighted":
            return float((score * support / (support.sum() + EPSILON)).sum())
        return float(score.mean())  # "macro"; "micro" has one score already


class F1Score(FBetaScore):
    """FBetaScore with beta = 1; arguments as `FBetaScore`."""

    batchable = True

    def __init__(self, average=None, threshold=None, name="f1_score"):
        super().__init__(average, 1.0, threshold, name)


#: the classes above, by name (bigtrain.metrics exports them)
CLASSES = (MeanSquaredError, RootMeanSquaredError, MeanAbsoluteError,
           MeanAbsolutePercentageError, BinaryAccuracy, CategoricalAccuracy,
           SparseCategoricalAccuracy, SparseTopKCategoricalAccuracy, BinaryCrossentropy,
           CategoricalCrossentropy, SparseCategoricalCrossentropy, Precision, Recall,
           FBetaScore, F1Score)
