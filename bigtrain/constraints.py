"""Keras-style weight constraints: `Dense(64, kernel_constraint=constraints.MaxNorm(3))`."""
from bigtrain.api.constraints import (Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm, get,
                                      max_norm, min_max_norm, non_neg, serialize, unit_norm)

__all__ = ["Constraint", "MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm", "max_norm", "non_neg",
           "unit_norm", "min_max_norm", "get", "serialize"]
