"""Keras losses by name, as Keras loss objects, as bigtrain's Keras-style loss classes
(`Huber(delta=0.5)`) or as callables, each made into a `LossSpec`: this is where compile
and load_model turn what the user gave into the loss fit trains on.

A Keras loss object (`keras.losses.Huber(delta=0.5)`) becomes a LossSpec with all its
arguments, read from the object (Keras's get_config drops some, and the ranks get the loss
pickled): bigtrain's own function for the classes below, else Keras's function with them.

The loss functions themselves are in loss_functions.py and the weighing and reduction in
loss_spec.py; their public names are importable from here as well.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch

from bigtrain.api.loss_functions import (ALIASES, KERAS_TWINS, LOGIT_LOSSES, LOSSES,
                                         binary_crossentropy, categorical_crossentropy,
                                         categorical_hinge, cosine_similarity, hinge, huber,
                                         kl_divergence, log_cosh, mean_absolute_error,
                                         mean_absolute_percentage_error, mean_squared_error,
                                         mean_squared_logarithmic_error, poisson,
                                         sparse_categorical_crossentropy, squared_hinge)
from bigtrain.api.loss_spec import LossSpec, _label

__all__ = ["LOSSES", "LOGIT_LOSSES", "KERAS_TWINS", "REDUCTIONS", "LossSpec", "KerasFunction",
           "get_loss", "named_loss", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "binary_crossentropy", "mean_squared_error",
           "mean_absolute_error", "huber", "cosine_similarity", "CategoricalCrossentropy",
           "SparseCategoricalCrossentropy", "BinaryCrossentropy", "MeanSquaredError",
           "MeanAbsoluteError", "Huber", "CosineSimilarity", "mean_absolute_percentage_error",
           "mean_squared_logarithmic_error", "kl_divergence", "poisson", "log_cosh", "hinge",
           "squared_hinge", "categorical_hinge", "MeanAbsolutePercentageError",
           "MeanSquaredLogarithmicError", "KLDivergence", "Poisson", "LogCosh", "Hinge",
           "SquaredHinge", "CategoricalHinge"]

#: Keras 3's loss names that need Keras itself (bigtrain runs Keras's function with them)
KERAS_ONLY = ("binary_focal_crossentropy", "categorical_focal_crossentropy", "ctc", "dice",
              "tversky", "circle", "categorical_generalized_cross_entropy")
#: Keras's reductions fit can train on; "mean" is Keras's other name for the first
REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight")


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
    canonical = ALIASES.get(name, name)
    return LossSpec(canonical, fn, bool(from_logits), options=kept, reduction=reduction)


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
    hint = (f"; {loss!r} is Keras's: it runs when Keras 3 imports on the torch backend "
            "(pip install keras, and KERAS_BACKEND=torch in the environment)"
            if loss in KERAS_ONLY else "")
    raise ValueError(f"unknown loss {loss!r}{hint}; valid names: {', '.join(sorted(LOSSES))}, "
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
MeanAbsolutePercentageError = _loss_class("mape", "MeanAbsolutePercentageError")
MeanSquaredLogarithmicError = _loss_class("msle", "MeanSquaredLogarithmicError")
KLDivergence = _loss_class("kl_divergence", "KLDivergence")
Poisson = _loss_class("poisson", "Poisson")
LogCosh = _loss_class("log_cosh", "LogCosh")
Hinge = _loss_class("hinge", "Hinge")
SquaredHinge = _loss_class("squared_hinge", "SquaredHinge")
CategoricalHinge = _loss_class("categorical_hinge", "CategoricalHinge")
