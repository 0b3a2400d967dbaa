"""Keras losses. Each returns one loss per sample; `LossSpec` weighs and reduces them as
Keras's `reduction` says ("sum_over_batch_size" by default: the mean over the batch).

When the model's last layer is a softmax (sigmoid) and the loss is a (binary) cross-entropy,
compile moves that activation into the loss: the loss then reads logits (log-softmax /
BCE-with-logits), which stays finite where probabilities round to 0 or 1.

A Keras loss object (`keras.losses.Huber(delta=0.5)`) becomes a LossSpec with all its
arguments, read from the object (Keras's get_config drops some, and the ranks get the loss
pickled): bigtrain's own function for the classes below, else Keras's function with them.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
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


LOSSES: dict[str, Callable] = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mse": mean_squared_error, "mean_squared_error": mean_squared_error,
    "mae": mean_absolute_error, "mean_absolute_error": mean_absolute_error,
    "huber": huber, "cosine_similarity": cosine_similarity,
}
#: losses that can read logits, and the activation they absorb
LOGIT_LOSSES = {"categorical_crossentropy": "softmax", "sparse_categorical_crossentropy": "softmax",
                "binary_crossentropy": "sigmoid"}
#: Keras's loss classes that become bigtrain's own loss of this name
KERAS_TWINS = {"CategoricalCrossentropy": "categorical_crossentropy",
               "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
               "BinaryCrossentropy": "binary_crossentropy", "MeanSquaredError": "mse",
               "MeanAbsoluteError": "mae", "Huber": "huber",
               "CosineSimilarity": "cosine_similarity"}
#: Keras's reductions fit can train on; "mean" is Keras's other name for the first
REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight")

_CLASS_ID_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")


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
        if self.masked:
            return self._masked_loss(y_true, y_pred, sample_weight)
        if sample_weight is None and self._fusable(y_true, y_pred):
            ids = y_true if y_true.dim() == 1 else y_true.reshape(-1)
            # torch's kernel takes int64 ids only; int32/uint8 labels are cast (B values)
            return F.cross_entropy(y_pred, ids.long(),  # one fused op, fwd and bwd
                                   label_smoothing=self.options.get("label_smoothing", 0.0))
        per = self._per_sample(y_true, y_pred)
        if per.dim() == 0:
            return self._scalar(per, y_true, y_pred, sample_weight)
        return self._reduce(per, y_true, sample_weight)

    def _fusable(self, y_true, y_pred) -> bool:
        return (self.from_logits and y_pred.dim() == 2 and self.name in _CLASS_ID_LOSSES
                and self.reduction in ("sum_over_batch_size", "mean")
                and self.options.get("axis", -1) in (-1, 1)
                and self.options.get("ignore_class") is None and _class_ids(y_true, y_pred))

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


def _defaults(fn) -> dict:
    """The keyword arguments `fn` takes besides from_logits, with their defaults."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    return {p.name: p.default for p in params if p.name != "from_logits"}


def _check_reduction(reduction, owner: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}(reduction={reduction!r}): fit trains on one number per "
                         f"batch, so the reduction must be one of "
                         f"{', '.join(map(repr, REDUCTIONS))} (reduction=None gives one loss "
                         "per sample, on which Keras's fit fails too)")


def named_loss(name: str, from_logits=False, reduction="sum_over_batch_size",
               owner: str | None = None, **options) -> LossSpec:
    """bigtrain's loss `name` with Keras's arguments, checked: `owner` (a class name) is
    the one the user called, for the messages."""
    owner = owner or name
    fn = LOSSES[name]
    allowed = _defaults(fn)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise TypeError(f"{owner}() got an unexpected argument {unknown[0]!r}; it takes "
                        f"{', '.join(['from_logits', *allowed, 'reduction', 'name'])}")
    _check_reduction(reduction, owner)
    kept = {k: v for k, v in options.items() if v != allowed[k]}
    canonical = {"mean_squared_error": "mse", "mean_absolute_error": "mae"}.get(name, name)
    return LossSpec(canonical, fn, bool(from_logits), options=kept, reduction=reduction)


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


class KerasFunction:
    """A Keras loss function with its arguments (or a Keras loss's `call`), called as a
    Keras loss object calls it: targets and predictions as float32 (or wider), the same
    rank. Plain attributes: it pickles with its arguments."""

    def __init__(self, fn, kwargs: dict):
        self.fn, self.kwargs = fn, dict(kwargs)
        self.__name__ = _label(fn)

    def __call__(self, y_true, y_pred):
        dtype = torch.promote_types(y_pred.dtype, torch.float32)
        y_true, y_pred = y_true.to(dtype), y_pred.to(dtype)
        if y_true.dim() == y_pred.dim() + 1 and y_true.shape[-1] == 1:
            y_true = y_true.squeeze(-1)  # Keras's squeeze_or_expand_to_same_rank
        elif y_pred.dim() == y_true.dim() + 1 and y_pred.shape[-1] == 1:
            y_true = y_true.unsqueeze(-1)
        return self.fn(y_true, y_pred, **self.kwargs)


def _is_keras_loss(obj) -> bool:
    return any(c.__name__ == "Loss" and c.__module__.startswith("keras")
               for c in type(obj).__mro__)


def _from_keras(obj) -> LossSpec:
    """A Keras loss object as a LossSpec with all of its arguments."""
    cls = type(obj)
    kwargs = dict(getattr(obj, "_fn_kwargs", None) or {})
    twin = KERAS_TWINS.get(cls.__name__)
    if twin is not None and cls.__module__.startswith("keras") and \
            set(kwargs) <= {"from_logits", *_defaults(LOSSES[twin])}:
        return named_loss(twin, reduction=obj.reduction, owner=cls.__name__, **kwargs)
    _check_reduction(obj.reduction, cls.__name__)
    wrapper = next(c for c in cls.__mro__ if c.__name__ in ("LossFunctionWrapper", "Loss"))
    if wrapper.__name__ == "LossFunctionWrapper" and cls.call is wrapper.call:
        fn = KerasFunction(obj.fn, kwargs)  # Keras's own function and all its arguments
    else:
        fn = KerasFunction(obj.call, {})  # a Loss subclass of the user's
    return LossSpec(None, fn, reduction=obj.reduction)


def get_loss(loss) -> LossSpec:
    """A LossSpec from a Keras loss name, a Keras loss object or a callable
    `(y_true, y_pred) -> loss`."""
    if isinstance(loss, LossSpec):
        return dataclasses.replace(loss, options=dict(loss.options), _checked=False)
    if _is_keras_loss(loss):
        return _from_keras(loss)
    if callable(loss) and not isinstance(loss, str):
        # torch losses (nn.CrossEntropyLoss(), F.cross_entropy) take (input, target)
        torch_order = isinstance(loss, torch.nn.modules.loss._Loss) or \
            getattr(loss, "__module__", "") == "torch.nn.functional"
        return LossSpec(None, loss, torch_order=torch_order)
    if isinstance(loss, str) and loss in LOSSES:
        return named_loss(loss)
    keras_fn = _keras_loss_named(loss) if isinstance(loss, str) else None
    if keras_fn is not None:  # "mape", "kl_divergence", "binary_focal_crossentropy", ...
        return _from_keras(keras_fn) if _is_keras_loss(keras_fn) else \
            LossSpec(None, KerasFunction(keras_fn, {}))
    raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(sorted(LOSSES))}, "
                     "a Keras or bigtrain loss object, or a callable (y_true, y_pred) -> "
                     "loss per sample")


def _keras_loss_named(name: str):
    """Keras's loss function (or object) of this name, Keras being installed; else None."""
    try:
        import keras
        found = keras.losses.get(name)
    except (ImportError, ValueError):
        return None
    return found if callable(found) else None


def _loss_class(loss: str, cls_name: str):
    def make(from_logits: bool = False, reduction: str = "sum_over_batch_size",
             name: str | None = None, **options) -> LossSpec:
        # name: Keras's name for the loss object; fit logs the loss as "loss" either way
        return named_loss(loss, from_logits, reduction, owner=cls_name, **options)
    args = ", ".join(f"{k}={v!r}" for k, v in _defaults(LOSSES[loss]).items())
    make.__name__ = make.__qualname__ = cls_name
    make.__doc__ = (f"Keras-style `{loss}` loss object: `from_logits=True` reads raw scores; "
                    f"also takes {args or 'no other argument'}, and Keras's reduction "
                    "('sum_over_batch_size', 'mean', 'sum', 'mean_with_sample_weight').")
    return make


CategoricalCrossentropy = _loss_class("categorical_crossentropy", "CategoricalCrossentropy")
SparseCategoricalCrossentropy = _loss_class("sparse_categorical_crossentropy",
                                            "SparseCategoricalCrossentropy")
BinaryCrossentropy = _loss_class("binary_crossentropy", "BinaryCrossentropy")
MeanSquaredError = _loss_class("mse", "MeanSquaredError")
MeanAbsoluteError = _loss_class("mae", "MeanAbsoluteError")
Huber = _loss_class("huber", "Huber")
CosineSimilarity = _loss_class("cosine_similarity", "CosineSimilarity")
