"""Keras-style losses by name or as functions (`bigtrain.losses.get("mse")`); Keras's loss
objects (`keras.losses.Huber(delta=0.5)`) are accepted by compile as they are."""
from bigtrain.api.losses import (LOSSES, BinaryCrossentropy, CategoricalCrossentropy,
                                 CategoricalHinge, CosineSimilarity, Hinge, Huber,
                                 KLDivergence, LogCosh, LossSpec, MeanAbsoluteError,
                                 MeanAbsolutePercentageError, MeanSquaredError,
                                 MeanSquaredLogarithmicError, Poisson,
                                 SparseCategoricalCrossentropy, SquaredHinge,
                                 binary_crossentropy, categorical_crossentropy,
                                 categorical_hinge, cosine_similarity, hinge, huber,
                                 kl_divergence, log_cosh, mean_absolute_error,
                                 mean_absolute_percentage_error, mean_squared_error,
                                 mean_squared_logarithmic_error, poisson,
                                 sparse_categorical_crossentropy, squared_hinge)
from bigtrain.api.losses import get_loss as get

__all__ = ["LOSSES", "LossSpec", "get", "BinaryCrossentropy", "CategoricalCrossentropy",
           "CosineSimilarity", "Huber", "MeanAbsoluteError", "MeanSquaredError",
           "SparseCategoricalCrossentropy", "binary_crossentropy", "categorical_crossentropy",
           "cosine_similarity", "huber", "sparse_categorical_crossentropy",
           "mean_squared_error", "mean_absolute_error", "CategoricalHinge", "Hinge",
           "KLDivergence", "LogCosh", "MeanAbsolutePercentageError",
           "MeanSquaredLogarithmicError", "Poisson", "SquaredHinge", "categorical_hinge",
           "hinge", "kl_divergence", "log_cosh", "mean_absolute_percentage_error",
           "mean_squared_logarithmic_error", "poisson", "squared_hinge"]
