"""Keras-style metrics (`bigtrain.metrics.get("auc")`, `bigtrain.metrics.Precision()`)."""
from bigtrain.api.metrics import AUC, Accuracy, MeanError, Metric, TopKCategoricalAccuracy
from bigtrain.api.metrics import get_metric as get
from bigtrain.api.metrics_keras import (
    BinaryAccuracy, BinaryCrossentropy, CategoricalAccuracy, CategoricalCrossentropy, F1Score,
    FBetaScore, MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError, Precision,
    Recall, RootMeanSquaredError, SparseCategoricalAccuracy, SparseCategoricalCrossentropy,
    SparseTopKCategoricalAccuracy)

__all__ = ["AUC", "Accuracy", "BinaryAccuracy", "BinaryCrossentropy", "CategoricalAccuracy",
           "CategoricalCrossentropy", "F1Score", "FBetaScore", "MeanAbsoluteError",
           "MeanAbsolutePercentageError", "MeanError", "MeanSquaredError", "Metric",
           "Precision", "Recall", "RootMeanSquaredError", "SparseCategoricalAccuracy",
           "SparseCategoricalCrossentropy", "SparseTopKCategoricalAccuracy",
           "TopKCategoricalAccuracy", "get"]
