"""The options of one Keras weight: its initializer, regularizer and constraint."""
from __future__ import annotations

from bigtrain.api import constraints as keras_constraints
from bigtrain.api import initializers as keras_initializers
from bigtrain.api import regularizers as keras_regularizers


class WeightOptions:
    """One Keras weight's `<role>_initializer`, `<role>_regularizer` and `<role>_constraint`.

    `initializer` is None for the layer's own default (its build keeps the code it always
    ran, so default weights are unchanged); `default` is that default's Keras name."""

    def __init__(self, default: str, initializer=None, regularizer=None, constraint=None):
        self.default = default
        given = initializer is not None and not (
            isinstance(initializer, str) and initializer.lower() == default)
        self.initializer = keras_initializers.get(initializer) if given else None
        self.regularizer = keras_regularizers.get(regularizer)
        self.constraint = keras_constraints.get(constraint)

    def init_(self, param, to_torch=None, fans=None, keras_shape=None) -> bool:
        """Fill `param` with the given initializer; False (nothing done) for the default."""
        if self.initializer is None:
            return False
        keras_initializers.fill_(param, self.initializer, to_torch, fans, keras_shape)
        return True

    def config(self, role: str) -> dict:
        """The constructor arguments of this weight, JSON-able (Model.save)."""
        init = self.default if self.initializer is None else \
            keras_initializers.serialize(self.initializer)
        return {f"{role}_initializer": init,
                f"{role}_regularizer": keras_regularizers.serialize(self.regularizer),
                f"{role}_constraint": keras_constraints.serialize(self.constraint)}
