"""Keras's `learning_rate` on the optimizer wrappers some strategies step with: zero1's
ZeroRedundancyOptimizer (`.optim`) and ddp_cpu_optimizer's HostOptimizer (`.optimizer`),
which the ranks' callbacks see as `model.optimizer`.

    model.optimizer = keras_facing(optimizer)  # Model's setter
"""
from __future__ import annotations

from bigtrain.api.keras_optimizer import KerasLearningRate


def keras_facing(optimizer):
    """`optimizer` with Keras's `learning_rate` when it wraps an optimizer that has it and
    lacks it itself: zero1's ZeroRedundancyOptimizer (`.optim`) and ddp_cpu_optimizer's
    HostOptimizer (`.optimizer`), which the ranks' callbacks see as `model.optimizer`.
    The rate lives on the wrapper's param groups, the ones the wrapped optimizer steps
    with (ZeRO copies them in at every step). The object keeps its identity (its class
    becomes a subclass), as the loop and the callbacks hold it."""
    inner = _wrapped(optimizer)
    if (not isinstance(inner, KerasLearningRate)
            or isinstance(getattr(type(optimizer), "learning_rate", None), property)):
        return optimizer
    base = type(optimizer)
    if base not in _wrapper_classes:
        _wrapper_classes[base] = type(base.__name__, (_WrapperRate, base),
                                      {"__module__": base.__module__,
                                       "__qualname__": base.__qualname__})
    optimizer.__class__ = _wrapper_classes[base]
    return optimizer


def _wrapped(optimizer):
    return getattr(optimizer, "optim", None) or getattr(optimizer, "optimizer", None)


class _WrapperRate(KerasLearningRate):
    """KerasLearningRate on a wrapper: the schedule is the wrapped optimizer's."""

    @property
    def schedule(self):
        return _wrapped(self).schedule


_wrapper_classes: dict[type, type] = {}
