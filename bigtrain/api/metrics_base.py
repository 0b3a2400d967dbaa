"""Keras metrics, accumulated on the device without a host sync per step: the base class
and the first metrics (`metrics.py` resolves names and objects, `metrics_keras.py` adds
Keras's other classes).

Each metric keeps its running sums in one small tensor (`state`), so ranks reduce metrics
with a single all-reduce of the concatenated states and the result equals the metric over
the whole global batch. Metrics read probabilities (the final activation applied).
"""
from __future__ import annotations

import torch


class Metric:
    """Base: `update` adds to `state` (a 1-D float64 tensor of sums); `result` reads it."""

    name = "metric"
    size = 2
    #: `update` adds per-sample sums, so one update on several batches stacked equals one
    #: update per batch (the loop then reads a few steps at once). A metric that adds a
    #: per-batch figure (a batch mean) must leave it False.
    batchable = False

    #: compiled as one of `weighted_metrics`: `update` gets the batch's sample weights
    #: (the engine's tally passes them; compile sets it on the run's own copy)
    weighted = False
    #: (a weighted metric of a masked sequence output) the output's loss scales each
    #: batch's weights of the steps kept by B*T / (steps kept) before the metrics read
    #: them, as Keras's does in place for reduction "sum_over_batch_size"; compile sets it
    #: False for a loss of another reduction ("sum", "mean_with_sample_weight") or none
    mask_scaled = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # not inherited: a subclass of a built-in metric may add a per-batch figure
        cls.batchable = cls.__dict__.get("batchable", False)

    def reads_scores_only(self, y_true, y_pred) -> bool:
        """True when raw scores (logits) give the same result as probabilities (argmax
        metrics), so the loop can skip the softmax before `update`."""
        return False

    def reset(self, device) -> None:
        self._state = torch.zeros(self.size, dtype=torch.float64, device=device)
        self._total = self._state[:1]  # the running sum, added to in place every step
        self._count = 0  # samples counted on the host: no device op per step

    @property
    def state(self) -> torch.Tensor:
        """The running sums (the host's sample count folded in here)."""
        if self._count:
            self._state[1] += self._count
            self._count = 0
        return self._state

    def _add(self, total: torch.Tensor, count: int) -> None:
        """Add one update's sum and sample count. In place, into the state: a per-step
        tensor kept until the pass's end would hold heap memory between steps, and on a
        CPU the allocator then hands a large step's buffers back to the system and takes
        them again, page fault by page fault (bench/RESULTS.md, batch 256)."""
        self._total.add_(total)
        self._count += count

    def _add_weighted(self, values: torch.Tensor, sample_weight: torch.Tensor) -> None:
        """Add one update's values (errors, or hits as booleans), each counted with the
        weight of its sample (`value_weights`): sum(w v) to the total, sum(w) to the count,
        as Keras's weighted mean."""
        w = value_weights(sample_weight, values)
        self._total.add_((values.to(torch.float64) * w).sum())
        self._state[1] += w.sum()

    def update(self, y_true: torch.Tensor, y_pred: torch.Tensor,
               sample_weight: torch.Tensor | None = None) -> None:
        """Add a batch. `sample_weight` (B,) or (B, T) is given to the metrics compiled as
        `weighted_metrics` (None when the batch has none); a subclass of your own takes it
        as Keras's `update_state(y_true, y_pred, sample_weight=None)` does."""
        raise NotImplementedError

    def result(self, state: torch.Tensor | None = None) -> float:
        s = self.state if state is None else state
        return float(s[0] / s[1]) if float(s[1]) > 0 else 0.0


def value_weights(sample_weight: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Each value's weight (float64, shaped as `values` (B, ...)): Keras's sample weights,
    one per sample (B,) or per time step (B, T), spread over the values of the sample or
    step they weigh. Keras averages a sample's values first and weighs the means; every
    sample having as many values, sum(w v) / sum(w) over the values is the same number."""
    w = sample_weight.detach().to(device=values.device, dtype=torch.float64)
    if w.dim() == values.dim() + 1 and w.shape[-1] == 1:
        w = w.squeeze(-1)  # (B, 1) weights of (B,) values
    if w.dim() > values.dim() or tuple(w.shape) != tuple(values.shape[:w.dim()]):
        raise ValueError(f"sample_weight of shape {tuple(sample_weight.shape)} does not fit "
                         f"a weighted metric's values of shape {tuple(values.shape)}: give "
                         "one weight per sample (or per time step of a sequence output)")
    return w.reshape(*w.shape, *[1] * (values.dim() - w.dim())).expand(values.shape)


def _dense_targets(y_true, y_pred):
    """Class-id targets as one-hot rows when the prediction has one column per class."""
    if y_true.shape != y_pred.shape and y_pred.dim() > 1 and y_pred.shape[-1] > 1 \
            and not y_true.is_floating_point():
        ids = y_true.reshape(y_pred.shape[:-1]).long()
        return torch.nn.functional.one_hot(ids, y_pred.shape[-1]).to(y_pred.dtype)
    return y_true


def _target_ids(y_true, y_pred):
    """The class id of each target: one-hot rows (the prediction's shape) by their argmax;
    class ids as they are (fit stores exact one-hot labels compactly as ids)."""
    if y_true.shape == y_pred.shape:
        return y_true.argmax(-1)
    return y_true.reshape(y_pred.shape[:-1]).long()


class Accuracy(Metric):
    """Keras "accuracy": categorical, sparse or binary, chosen from the shapes as Keras does.

    Args:
        kind: "categorical", "sparse" or "binary"; None: read from the first batch of each
            pass (each model the object is compiled into reads its own).
        name: the key in the History and the logs.
    """

    batchable = True

    def __init__(self, kind: str | None = None, name: str = "accuracy"):
        self.kind, self.name = kind, name
        self._kind = kind  # the kind in use: `kind`, or the one read since the last reset

    def reset(self, device) -> None:
        super().reset(device)
        self._kind = self.kind

    def _resolve(self, y_true, y_pred) -> str:
        if y_pred.dim() == 1 or y_pred.shape[-1] == 1:
            return "binary"
        if y_true.shape == y_pred.shape:
            return "categorical"
        return "sparse"

    def reads_scores_only(self, y_true, y_pred) -> bool:
        self._kind = self._kind or self._resolve(y_true, y_pred)
        return self._kind != "binary"

    def update(self, y_true, y_pred, sample_weight=None):
        kind = self._kind = self._kind or self._resolve(y_true, y_pred)
        if kind == "sparse":
            if y_true.dtype is not torch.int64 or y_true.dim() != y_pred.dim() - 1:
                y_true = y_true.reshape(y_pred.shape[:-1]).long()  # (B, 1) or int32 ids
            hit = y_pred.argmax(-1) == y_true
        elif kind == "categorical":
            hit = y_pred.argmax(-1) == _target_ids(y_true, y_pred)
        else:
            y_true = _dense_targets(y_true, y_pred)
            hit = (y_pred > 0.5) == (y_true.reshape(y_pred.shape) > 0.5)
        if sample_weight is not None:
            self._add_weighted(hit, sample_weight)
        else:
            self._add(torch.count_nonzero(hit), hit.numel())  # hits: int64, exact


class TopKCategoricalAccuracy(Metric):
    """Target in the k highest predictions (one-hot or integer targets)."""

    batchable = True

    def __init__(self, k: int = 5, name: str = "top_k_categorical_accuracy"):
        self.k, self.name = k, name

    def reads_scores_only(self, y_true, y_pred) -> bool:
        return True

    def update(self, y_true, y_pred, sample_weight=None):
        target = _target_ids(y_true, y_pred)
        topk = y_pred.topk(min(self.k, y_pred.shape[-1]), dim=-1).indices
        hit = (topk == target.unsqueeze(-1)).any(-1)
        if sample_weight is not None:
            self._add_weighted(hit, sample_weight)
        else:
            self._add(torch.count_nonzero(hit), hit.numel())


class MeanError(Metric):
    """Mean squared ("mse") or absolute ("mae") error over all values."""

    batchable = True

    def __init__(self, kind: str, name: str | None = None):
        """Args:
            kind: "mse" / "mean_squared_error" or "mae" / "mean_absolute_error".
            name: the key in the History and the logs (default: `kind`)."""
        squared = {"mse": True, "mean_squared_error": True, "mae": False,
                   "mean_absolute_error": False}
        if kind not in squared:
            raise ValueError(f"MeanError takes 'mse' or 'mae', got {kind!r}")
        self.name = kind if name is None else name
        self.squared = squared[kind]  # kept apart: the name may change (an output's prefix)

    def update(self, y_true, y_pred, sample_weight=None):
        y_true = _dense_targets(y_true, y_pred)
        d = y_pred - y_true.reshape(y_pred.shape).to(y_pred.dtype)
        err = d * d if self.squared else d.abs()
        if sample_weight is not None:
            self._add_weighted(err, sample_weight)
        else:
            self._add(err.sum(), err.numel())


class AUC(Metric):
    """Keras's AUC from histograms of positive and negative scores over its evenly spaced
    thresholds: the confusion counts at each threshold are sums over the histogram, so
    keras.metrics.AUC's curves and sums read the same numbers. Sums of histograms reduce
    exactly across ranks.

    Args:
        num_thresholds: Keras's thresholds, evenly spaced over [0, 1] (one bucket each).
        curve: "ROC" or "PR".
        summation_method: "interpolation" (trapezoids; for PR, Davis & Goadrich's
            interpolation, as Keras), "minoring" or "majoring".
        name: the key in the History and the logs.
        from_logits: the predictions are logits (a sigmoid is applied first).
        multi_label, num_labels, label_weights, thresholds: Keras's; only their defaults
            are read (one curve over every value, evenly spaced thresholds).
    """

    batchable = True

    def __init__(self, num_thresholds: int = 200, curve: str = "ROC",
                 summation_method: str = "interpolation", name: str = "auc",
                 thresholds=None, multi_label: bool = False, num_labels=None,
                 label_weights=None, from_logits: bool = False):
        if num_thresholds < 2:
            raise ValueError(f"AUC needs num_thresholds > 1, got {num_thresholds}")
        if curve not in ("ROC", "PR") or summation_method not in (
                "interpolation", "minoring", "majoring"):
            raise ValueError("AUC takes curve='ROC' or 'PR' and summation_method="
                             "'interpolation', 'minoring' or 'majoring', got "
                             f"curve={curve!r}, summation_method={summation_method!r}")
        if multi_label or num_labels is not None or label_weights is not None \
                or thresholds is not None:
            raise ValueError("AUC(multi_label=, num_labels=, label_weights=, thresholds=) are "
                             "not read by bigtrain: it reads one curve over evenly spaced "
                             "thresholds (num_thresholds=)")
        self.bins, self.name, self.curve = num_thresholds, name, curve
        self.summation_method, self.from_logits = summation_method, from_logits
        self.size = 2 * num_thresholds

    def update(self, y_true, y_pred, sample_weight=None):
        y_true = _dense_targets(y_true, y_pred)
        p = y_pred.detach().reshape(-1).float()
        p = (p.sigmoid() if self.from_logits else p).clamp(0, 1)
        t = y_true.reshape(-1) > 0.5
        # Keras's buckets: a score counts above threshold k / (bins - 1) when strictly
        # greater, so bucket ceil(p (bins - 1)) - 1 (0 for a score of 0)
        idx = (p * (self.bins - 1)).ceil().long().sub_(1).clamp_(min=0)
        # each score counts once, or with its sample's weight (weighted_metrics)
        counts = torch.ones_like(idx, dtype=torch.float64) if sample_weight is None else \
            value_weights(sample_weight, y_pred).reshape(-1)
        self.state[: self.bins].index_add_(0, idx[t], counts[t])
        self.state[self.bins:].index_add_(0, idx[~t], counts[~t])

    def result(self, state=None):
        s = (self.state if state is None else state).double()
        pos, neg = s[: self.bins], s[self.bins:]
        # counts above each threshold, lowest threshold first (bins,)
        tp, fp = pos.flip(0).cumsum(0).flip(0), neg.flip(0).cumsum(0).flip(0)
        fn, tn = pos.sum() - tp, neg.sum() - fp
        if self.curve == "PR" and self.summation_method == "interpolation":
            return _pr_auc(tp, fp, fn)
        recall = _ratio(tp, tp + fn)
        x, y = (_ratio(fp, fp + tn), recall) if self.curve == "ROC" else \
            (recall, _ratio(tp, tp + fp))
        heights = {"interpolation": (y[:-1] + y[1:]) / 2, "minoring": torch.minimum(y[:-1], y[1:]),
                   "majoring": torch.maximum(y[:-1], y[1:])}[self.summation_method]
        return float(((x[:-1] - x[1:]) * heights).sum())


def _ratio(a, b):
    """a / b, 0 where b is 0 (Keras's divide_no_nan)."""
    return torch.where(b > 0, a / torch.where(b > 0, b, 1.0), 0.0)


def _pr_auc(tp, fp, fn) -> float:
    """Keras's interpolate_pr_auc (Davis & Goadrich 2006): precision varies as tp / p with
    tp and p = tp + fp linear between thresholds."""
    dtp = tp[:-1] - tp[1:]
    p = tp + fp
    slope = _ratio(dtp, (p[:-1] - p[1:]).clamp(min=0))
    intercept = tp[1:] - slope * p[1:]
    both = (p[:-1] > 0) & (p[1:] > 0)
    p_ratio = torch.where(both, _ratio(p[:-1], p[1:].clamp(min=0)), 1.0)
    return float(_ratio(slope * (dtp + intercept * torch.log(p_ratio)),
                        (tp[1:] + fn[1:]).clamp(min=0)).sum())


class OutputLoss(Metric):
    """One output's compiled loss, in a model of several outputs: Keras logs it as
    "<output>_loss" beside the total. Mean over samples of the loss the step computed
    (sample weights applied, as Keras's "sum_over_batch_size"), before `loss_weights`.

    The step's loss is `loss_fn` itself, which adds each value it returns here, so the log
    is the loss that was trained on; `update` has nothing left to do.
    """

    batchable = True  # update adds nothing: stacked steps change no sum

    def __init__(self, loss, column: int | None = None):
        """Args:
            loss: the output's LossSpec, `loss(y_true, y_pred, sample_weight)`.
            column: this output's column of a (B, outputs) sample weight (per-output
                weights), or None."""
        self.loss, self.column, self.name = loss, column, "loss"
        self._state = None  # set by reset, at the start of each pass

    def reads_scores_only(self, y_true, y_pred) -> bool:
        return True

    def update(self, y_true, y_pred, sample_weight=None):
        pass  # fed by loss_fn

    def loss_fn(self, y_true, y_pred, sample_weight=None) -> torch.Tensor:
        """The output's loss for the step, counted into this metric."""
        if sample_weight is not None and sample_weight.dim() == 2 and self.column is not None:
            sample_weight = sample_weight[:, self.column]  # (B, outputs) -> (B,)
        value = self.loss(y_true, y_pred, sample_weight)
        if self._state is not None:
            n = int(y_pred.shape[0])
            self._add(value.detach().double() * n, n)
        return value
