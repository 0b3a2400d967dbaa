"""Keras-style losses by name or as functions (`bigtrain.losses.get("mse")`)."""
from bigtrain.api.losses import (LOSSES, BinaryCrossentropy, CategoricalCrossentropy, LossSpec,
                                 MeanAbsoluteError, MeanSquaredError, SparseCategoricalCrossentropy, binary_crossentropy, categorical_crossentropy,
                                 mean_absolute_error, mean_squared_error,
                                 sparse_categorical_crossentropy)
from bigtrain.api.losses import get_loss as get

__all__ = ["LOSSES", "LossSpec", "get", "BinaryCrossentropy", "CategoricalCrossentropy",
           "MeanAbsoluteError", "MeanSquaredError", "SparseCategoricalCrossentropy", "binary_crossentropy", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "mean_squared_error", "mean_absolute_error"]
