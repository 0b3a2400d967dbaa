"""Keras losses. Each returns one loss per sample; `LossSpec` averages over the batch.

When the model's last layer is a softmax (sigmoid) and the loss is a (binary) cross-entropy,
compile moves that activation into the loss: the loss then reads logits (log-softmax /
BCE-with-logits), which stays finite where probabilities round to 0 or 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

EPSILON = 1e-7  # Keras's clip for probabilities


def _class_ids(y_true, y_pred) -> bool:
    """Integer targets without the prediction's class axis are class ids; a target shaped
    like the prediction is one-hot (or soft) whatever its dtype, as in Keras."""
    return not y_true.is_floating_point() and tuple(y_true.shape) != tuple(y_pred.shape)


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    if _class_ids(y_true, y_pred):  # one-hot labels stored compactly as class ids
        return sparse_categorical_crossentropy(y_true, y_pred, from_logits)
    y_true = y_true.to(y_pred.dtype)  # integer one-hot rows (np.eye(C, dtype=int)[y])
    if from_logits:
        if y_pred.dim() == 2:  # one fused kernel for the common (B, C) case
            return F.cross_entropy(y_pred, y_true, reduction="none")
        return -(y_true * torch.log_softmax(y_pred, dim=-1)).sum(-1)
    p = y_pred / y_pred.sum(-1, keepdim=True)
    return -(y_true * torch.log(p.clamp(EPSILON, 1 - EPSILON))).sum(-1)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    target = y_true.reshape(y_pred.shape[:-1]).long()
    logits = y_pred if from_logits else torch.log(y_pred.clamp(EPSILON, 1 - EPSILON))
    return F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none"
                           ).reshape(target.shape)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    y_true = y_true.reshape(y_pred.shape).to(y_pred.dtype)
    if from_logits:
        per = F.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none")
    else:
        per = F.binary_cross_entropy(y_pred.clamp(EPSILON, 1 - EPSILON), y_true, reduction="none")
    return per.mean(-1) if per.dim() > 1 else per


def mean_squared_error(y_true, y_pred, from_logits=False):
    d = (y_pred - y_true.reshape(y_pred.shape)) ** 2
    return d.mean(-1) if d.dim() > 1 else d


def mean_absolute_error(y_true, y_pred, from_logits=False):
    d = (y_pred - y_true.reshape(y_pred.shape)).abs()
    return d.mean(-1) if d.dim() > 1 else d


LOSSES: dict[str, Callable] = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mse": mean_squared_error, "mean_squared_error": mean_squared_error,
    "mae": mean_absolute_error, "mean_absolute_error": mean_absolute_error,
}
#: losses that can read logits, and the activation they absorb
LOGIT_LOSSES = {"categorical_crossentropy": "softmax", "sparse_categorical_crossentropy": "softmax",
                "binary_crossentropy": "sigmoid"}


_CLASS_ID_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")


@dataclass
class LossSpec:
    """A loss for one model output.

    Attributes:
        name: Keras name, or None for a user callable.
        fn: `fn(y_true, y_pred) -> per-sample (or scalar) loss`.
        from_logits: the model output this loss reads is logits (activation deferred).
    """
    name: str | None
    fn: Callable
    from_logits: bool = False

    #: the callable takes (y_pred, y_true) as torch losses do, not Keras's (y_true, y_pred)
    torch_order: bool = False
    #: the output carries a Keras time-step mask (`_keras_mask`, (B, T) bool): masked steps
    #: are left out of the loss, as Keras does
    masked: bool = False

    def __call__(self, y_true, y_pred, sample_weight=None) -> torch.Tensor:
        if self.masked:
            return self._masked_loss(y_true, y_pred, sample_weight)
        if sample_weight is None and self.from_logits and y_pred.dim() == 2 and \
                self.name in _CLASS_ID_LOSSES and _class_ids(y_true, y_pred):
            ids = y_true if y_true.dim() == 1 else y_true.reshape(-1)
            # torch's kernel takes int64 ids only; int32/uint8 labels are cast (B values)
            return F.cross_entropy(y_pred, ids.long())  # one fused op, fwd and bwd
        if self.name is None:
            per = self.fn(y_pred, y_true) if self.torch_order else self.fn(y_true, y_pred)
        else:
            per = self.fn(y_true, y_pred, from_logits=self.from_logits)
        if per.dim() == 0:
            return per
        if sample_weight is None:
            return per.mean()  # the mean over (B, ...) equals the mean of per-sample means
        per = per.reshape(per.shape[0], -1).mean(-1)  # (B,)
        if sample_weight is not None:
            per = per * sample_weight.to(per.dtype)
        return per.mean()  # Keras "sum_over_batch_size"

    def _per_step(self, y_true, y_pred) -> torch.Tensor:
        if self.name is None:
            return self.fn(y_pred, y_true) if self.torch_order else self.fn(y_true, y_pred)
        return self.fn(y_true, y_pred, from_logits=self.from_logits)

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
        per = self._per_step(y_true[mask], y_pred[mask])  # (N,) per real step
        if per.dim() == 0:
            raise ValueError("a loss callable on a masked output must return one value per "
                             "time step, not a scalar")
        per = per.reshape(per.shape[0], -1).mean(-1)
        if sample_weight is not None:  # (B,) per sample -> every step of that sample
            weight = sample_weight.to(per.dtype).reshape(-1, 1).expand(mask.shape)[mask]
            per = per * weight
        return per.sum() / max(per.shape[0], 1)


def get_loss(loss) -> LossSpec:
    """A LossSpec from a Keras loss name or a callable `(y_true, y_pred) -> loss`."""
    if isinstance(loss, LossSpec):
        return LossSpec(loss.name, loss.fn, loss.from_logits, loss.torch_order, loss.masked)
    if callable(loss) and not isinstance(loss, str):
        # torch losses (nn.CrossEntropyLoss(), F.cross_entropy) take (input, target)
        torch_order = isinstance(loss, torch.nn.modules.loss._Loss) or \
            getattr(loss, "__module__", "") == "torch.nn.functional"
        return LossSpec(None, loss, torch_order=torch_order)
    if isinstance(loss, str) and loss in LOSSES:
        canonical = {"mean_squared_error": "mse", "mean_absolute_error": "mae"}.get(loss, loss)
        return LossSpec(canonical, LOSSES[loss])
    raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(sorted(LOSSES))}, "
                     "or pass a callable (y_true, y_pred) -> loss")


def _loss_class(name: str):
    def make(from_logits: bool = False) -> LossSpec:
        spec = get_loss(name)
        spec.from_logits = from_logits
        return spec
    make.__name__ = "".join(p.capitalize() for p in name.split("_"))
    make.__doc__ = f"Keras-style `{name}` loss object; `from_logits=True` reads raw scores."
    return make


CategoricalCrossentropy = _loss_class("categorical_crossentropy")
SparseCategoricalCrossentropy = _loss_class("sparse_categorical_crossentropy")
BinaryCrossentropy = _loss_class("binary_crossentropy")
MeanSquaredError = _loss_class("mse")
MeanAbsoluteError = _loss_class("mae")
