"""Keras's weight constraints (`keras.constraints`): MaxNorm, NonNeg, UnitNorm, MinMaxNorm.

As in Keras, a constraint projects its weight after every optimizer step (the step hook
of bigtrain.parallel.update_rules). `axis` counts Keras's layout of the weight (a Dense
kernel is (in, out): axis=0 constrains each unit's incoming weights), whatever torch's.

Example:
    Dense(64, kernel_constraint=constraints.MaxNorm(3))
"""
from __future__ import annotations

import torch

from bigtrain.api.keras_objects import KerasObject, lookup, serialize  # noqa: F401

EPSILON = 1e-7  # keras.backend.epsilon()


class Constraint(KerasObject):
    """Base class: `c(w)` is `w` projected (in Keras's layout of the weight)."""

    #: reads norms across elements (under sharding it needs the whole tensor)
    reads_norms = True

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w


def _norms(w: torch.Tensor, axis) -> torch.Tensor:
    return w.square().sum(dim=axis, keepdim=True).sqrt()


class MaxNorm(Constraint):
    """Scale the norms along `axis` down to at most `max_value`."""

    def __init__(self, max_value: float = 2.0, axis=0):
        self.max_value, self.axis = float(max_value), axis

    def __call__(self, w):
        norms = _norms(w, self.axis)
        return w * (norms.clamp(0, self.max_value) / (EPSILON + norms))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Negative entries become 0."""

    reads_norms = False

    def __call__(self, w):
        return w.clamp_min(0)


class UnitNorm(Constraint):
    """Norms along `axis` become 1."""

    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w):
        return w / (EPSILON + _norms(w, self.axis))

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Norms along `axis` move, by `rate`, into [min_value, max_value]."""

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0,
                 axis=0):
        self.min_value, self.max_value, self.rate, self.axis = \
            float(min_value), float(max_value), float(rate), axis

    def __call__(self, w):
        norms = _norms(w, self.axis)
        desired = self.rate * norms.clamp(self.min_value, self.max_value) + \
            (1 - self.rate) * norms
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


max_norm, non_neg, unit_norm, min_max_norm = MaxNorm, NonNeg, UnitNorm, MinMaxNorm
_BY_NAME = {"maxnorm": MaxNorm, "max_norm": MaxNorm, "nonneg": NonNeg, "non_neg": NonNeg,
            "unitnorm": UnitNorm, "unit_norm": UnitNorm, "minmaxnorm": MinMaxNorm,
            "min_max_norm": MinMaxNorm}


def get(identifier) -> Constraint | None:
    """A Constraint from None, a Keras name ("max_norm"), an instance or a config dict."""
    if identifier is None:
        return None
    return lookup(identifier, Constraint, _BY_NAME, "constraint", "give a bigtrain.constraints "
                  "object (MaxNorm, NonNeg, UnitNorm, MinMaxNorm), its name or its config dict")
