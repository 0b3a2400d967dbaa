"""Keras-style losses by name or as functions (`bigtrain.losses.get("mse")`); Keras's loss
objects (`keras.losses.Huber(delta=0.5)`) are accepted by compile as they are."""
from bigtrain.api.losses import (LOSSES, BinaryCrossentropy, CategoricalCrossentropy,
                                 CosineSimilarity, Huber, LossSpec, MeanAbsoluteError,
                                 MeanSquaredError, SparseCategoricalCrossentropy,
                                 binary_crossentropy, categorical_crossentropy,
                                 cosine_similarity, huber, mean_absolute_error,
                                 mean_squared_error, sparse_categorical_crossentropy)
from bigtrain.api.losses import get_loss as get

__all__ = ["LOSSES", "LossSpec", "get", "BinaryCrossentropy", "CategoricalCrossentropy",
           "CosineSimilarity", "Huber", "MeanAbsoluteError", "MeanSquaredError",
           "SparseCategoricalCrossentropy", "binary_crossentropy", "categorical_crossentropy",
           "cosine_similarity", "huber", "sparse_categorical_crossentropy",
           "mean_squared_error", "mean_absolute_error"]
