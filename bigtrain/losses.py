"""Keras-style losses by name or as functions (`bigtrain.losses.get("mse")`)."""
from bigtrain.api.losses import (LOSSES, LossSpec, binary_crossentropy, categorical_crossentropy,
                                 mean_absolute_error, mean_squared_error,
                                 sparse_categorical_crossentropy)
from bigtrain.api.losses import get_loss as get

__all__ = ["LOSSES", "LossSpec", "get", "binary_crossentropy", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "mean_squared_error", "mean_absolute_error"]
