"""`LossSpec`: one model output's loss, weighed and reduced as Keras does.

A loss function gives one value per sample (or per position); `LossSpec` applies
sample_weight / class_weight, a Keras time-step mask and ignore_class, then reduces as
Keras's `reduction` says ("sum_over_batch_size" by default: the mean over the batch). It
also says when a loss is exact on whole batches only (`whole_batch_only`), which fit
checks before it splits batches over processes or micro-batches.

When the model's last layer is a softmax (sigmoid) and the loss is a (binary) cross-entropy,
compile moves that activation into the loss: the loss then reads logits (log-softmax /
BCE-with-logits, `from_logits=True`), which stays finite where probabilities round to 0
or 1. Building a LossSpec from a name, a Keras object or a callable is losses.py's part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

_CLASS_ID_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")
#: float dtypes a mixed-precision forward (autocast, FSDP's bf16 parameters) outputs in
LOW_PRECISION = (torch.float16, torch.bfloat16)


def float32_output(y_pred):
    """A float16/bfloat16 output as float32 (with its time-step mask), else as it is.

    Keras computes every loss and metric in float32 (their dtype, floatx) whatever the
    model's compute dtype: under precision="bf16-mixed" the losses that cast the targets to
    the prediction's dtype (Huber, cosine similarity, a label-smoothed cross-entropy) would
    otherwise round float32 targets to bf16's 8 significant bits (1000.5 -> 1000) and sum
    in bf16."""
    if not isinstance(y_pred, torch.Tensor) or y_pred.dtype not in LOW_PRECISION:
        return y_pred
    out = y_pred.float()  # differentiable: the gradient flows back in the output's dtype
    mask = getattr(y_pred, "_keras_mask", None)
    if mask is not None:
        out._keras_mask = mask
    return out


@dataclass
class LossSpec:
    """A loss for one model output.

    Attributes:
        name: bigtrain's name of the loss, or None for a user callable.
        fn: `fn(y_true, y_pred) -> per-sample (or scalar) loss`; a named loss also takes
            `from_logits` and `options`.
        from_logits: the model output this loss reads is logits (activation deferred).
        options: the named loss's other arguments (label_smoothing, ignore_class, axis,
            delta), those that differ from the default.
        reduction: Keras's: "sum_over_batch_size" (alias "mean"), "sum" or
            "mean_with_sample_weight".
        split: the run splits each batch over processes or micro-batches (set by fit).
    """
    name: str | None
    fn: Callable
    from_logits: bool = False

    #: the callable takes (y_pred, y_true) as torch losses do, not Keras's (y_true, y_pred)
    torch_order: bool = False
    #: the output carries a Keras time-step mask (`_keras_mask`, (B, T) bool): masked steps
    #: are left out of the loss, as Keras does
    masked: bool = False
    options: dict = field(default_factory=dict)
    reduction: str = "sum_over_batch_size"
    split: bool = False
    _checked: bool = field(default=False, repr=False, compare=False)

    def __call__(self, y_true, y_pred, sample_weight=None) -> torch.Tensor:
        # the tests below are written out rather than called: this runs every step
        if isinstance(y_pred, torch.Tensor) and y_pred.dtype in LOW_PRECISION:
            y_pred = float32_output(y_pred)
        if self.masked:
            return self._masked_loss(y_true, y_pred, sample_weight)
        options = self.options
        if (sample_weight is None and self.from_logits and y_pred.dim() == 2
                and self.name in _CLASS_ID_LOSSES
                and self.reduction in ("sum_over_batch_size", "mean")
                and options.get("axis", -1) in (-1, 1) and options.get("ignore_class") is None
                and not y_true.is_floating_point() and y_true.shape != y_pred.shape):
            # class ids (loss_functions._class_ids) into one fused op, fwd and bwd
            ids = y_true if y_true.dim() == 1 else y_true.reshape(-1)
            # torch's kernel takes int64 ids only; int32/uint8 labels are cast (B values)
            return F.cross_entropy(y_pred, ids.long(),
                                   label_smoothing=options.get("label_smoothing", 0.0))
        per = self._per_sample(y_true, y_pred)
        if per.dim() == 0:
            return self._scalar(per, y_true, y_pred, sample_weight)
        return self._reduce(per, y_true, sample_weight)

    def _per_sample(self, y_true, y_pred) -> torch.Tensor:
        if self.name is None:
            return self.fn(y_pred, y_true) if self.torch_order else self.fn(y_true, y_pred)
        return self.fn(y_true, y_pred, from_logits=self.from_logits, **self.options)

    def _valid(self, y_true, per) -> torch.Tensor | None:
        """(B, ...) bool: the positions `ignore_class` keeps, or None."""
        ignore = self.options.get("ignore_class")
        return None if ignore is None else y_true.reshape(per.shape) != ignore

    def _reduce(self, per, y_true, sample_weight) -> torch.Tensor:
        """Keras's reduction of per-sample (or per-position) values, `sample_weight` (B,)
        weighing every value of its sample, or (B, T) weighing each time step."""
        valid = self._valid(y_true, per)
        if sample_weight is None and valid is None:
            # the mean over (B, ...) equals the mean of per-sample means
            return per.sum() if self.reduction == "sum" else per.mean()
        if sample_weight is not None and per.shape[0] != sample_weight.shape[0]:
            raise ValueError(f"the loss gave values of shape {tuple(per.shape)} for a batch of "
                             f"{sample_weight.shape[0]} samples, so sample_weight/class_weight "
                             "cannot weigh them: the loss must return one value per sample")
        weight = torch.ones_like(per) if sample_weight is None else \
            _spread_weight(sample_weight.to(per.dtype), per)
        if valid is not None:
            weight = weight * valid
        total = (per * weight).sum()
        if self.reduction == "sum":
            return total
        if self.reduction == "mean_with_sample_weight":
            count = weight.sum()
        else:
            count = valid.sum() if valid is not None else per.new_tensor(float(per.numel()))
        # Keras's divide_no_nan: a batch of ignored labels only (or of weight 0) gives 0
        return torch.where(count > 0, total / count.clamp(min=1e-12), total * 0.0)

    def _scalar(self, value, y_true, y_pred, sample_weight) -> torch.Tensor:
        """A callable's one number for the batch, read as the batch's mean."""
        if sample_weight is not None:
            raise ValueError(f"the loss {_label(self.fn)} returned one number for the batch, so "
                             "fit cannot weigh its samples (sample_weight or class_weight): "
                             "return one loss per sample, shape (batch,) (e.g. leave out the "
                             "final mean; for a torch loss, reduction='none'), and bigtrain "
                             "weighs and averages them as Keras does")
        if self.split and not self._checked:
            self._checked = True
            if _sums_over_batch(self._per_sample, y_true, y_pred):
                raise ValueError(f"the loss {_label(self.fn)} returns the batch's sum, and this "
                                 "run splits each batch over processes (or accumulate_steps "
                                 "micro-batches), which bigtrain weighs as means, so each "
                                 "step would be a fraction of the sum's: return one loss per "
                                 "sample (bigtrain averages them; a Keras loss object with "
                                 "reduction='sum' sums them, on one process), or the mean")
        return value

    def _masked_loss(self, y_true, y_pred, sample_weight) -> torch.Tensor:
        """Keras's masked "sum_over_batch_size": sum(loss * weight * mask) / sum(mask).

        The loss runs on the real steps only, y_pred (B, T, ...)[mask] -> (N, ...), so every
        loss (and a user's callable) gets Keras's per-step values; no real step: zero."""
        mask = getattr(y_pred, "_keras_mask", None)
        if mask is None:
            raise RuntimeError("this output carries a time-step mask (Embedding(mask_zero=True) "
                               "or Masking) but the loss got the output without it: the model "
                               "ran inside a wrapper that replaced its outputs")
        if tuple(y_true.shape[:2]) != tuple(mask.shape):
            raise ValueError(f"the targets have shape {tuple(y_true.shape)}, but the output's "
                             f"time-step mask is {tuple(mask.shape)} (batch, timesteps): give "
                             "one target per time step")
        y_true = y_true[mask]
        per = self._per_sample(y_true, y_pred[mask])  # (N,) per real step
        if per.dim() == 0:
            raise ValueError("a loss callable on a masked output must return one value per "
                             "time step, not a scalar")
        if per.shape[0] == 0:
            return per.sum()
        if sample_weight is not None:  # (B,) per sample or (B, T) per step -> (N,)
            sample_weight = _spread_weight(sample_weight, mask)[mask]
        return self._reduce(per, y_true, sample_weight)

    def whole_batch_only(self) -> tuple[str, str] | None:
        """(what, how to avoid it) when this loss is exact on whole batches only: it sums
        over the batch or divides by a count or weight of the whole batch, which ranks and
        micro-batches (each weighed as a share of a mean) would each take of their own
        share; None when it is a plain mean."""
        if self.masked:
            return ("an output carries a time-step mask (masked steps are left out of the "
                    "loss)", "end the model with a layer that drops the mask (e.g. "
                    "return_sequences=False)")
        if self.options.get("ignore_class") is not None:
            return (f"the loss leaves out the labels of class {self.options['ignore_class']} "
                    "(ignore_class: the mean is over the batch's other labels)",
                    "drop ignore_class and give those samples sample_weight 0 (the mean then "
                    "counts them)")
        if self.reduction == "sum":
            return ("the loss sums over the batch (reduction='sum')", "use "
                    "reduction='sum_over_batch_size' (the default), with a learning rate "
                    "scaled by the batch size")
        if self.reduction == "mean_with_sample_weight":
            return ("the loss divides by the batch's sum of sample weights "
                    "(reduction='mean_with_sample_weight')",
                    "use reduction='sum_over_batch_size' (the default)")
        if self.options.get("axis") == 0:
            return ("the loss reduces over the batch axis (axis=0)", "reduce over a feature "
                    "axis (axis=-1)")
        return None


def _label(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _sums_over_batch(loss, y_true, y_pred) -> bool:
    """Whether `loss(y_true, y_pred)` (one number) is the batch's sum rather than its mean,
    read from two halves of the batch: a sum of the whole equals the halves' sum, a mean
    their mean. A loss that fails on a half batch, or is neither, counts as a mean."""
    half = y_pred.shape[0] // 2
    if half == 0:
        return False
    try:
        with torch.no_grad():
            a, b, whole = (float(loss(y_true[lo:hi], y_pred[lo:hi]))
                           for lo, hi in ((0, half), (half, 2 * half), (0, 2 * half)))
    except Exception:  # a loss for whole batches only (a fixed batch size): not checked
        return False
    tol = 1e-4 * (abs(a) + abs(b)) + 1e-12
    return abs(whole - (a + b)) <= tol < abs(whole - (a + b) / 2)


def _spread_weight(weight: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A sample_weight spread over `values` (B, ...): (B,) weighs every value of its
    sample; a weight per time step, (B, T) against (B, T) values (a temporal output, Keras's
    2-D sample_weight), weighs each value, a trailing axis of 1 aside as in Keras's
    squeeze_or_expand_to_same_rank."""
    if weight.dim() > 1 and weight.shape[-1] == 1 and weight.dim() == values.dim() + 1:
        weight = weight.squeeze(-1)  # (B, T, 1) against (B, T)
    if weight.dim() == 1:
        return weight.reshape(-1, *[1] * (values.dim() - 1)).expand_as(values)
    if tuple(weight.shape) != tuple(values.shape[:weight.dim()]):
        raise ValueError(f"sample_weight of shape {tuple(weight.shape)} does not fit the "
                         f"loss's values of shape {tuple(values.shape)}: give one weight per "
                         "sample (batch,), or for a temporal output one per time step "
                         "(batch, timesteps)")
    return weight.reshape(*weight.shape, *[1] * (values.dim() - weight.dim())).expand_as(values)
