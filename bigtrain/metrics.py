"""Keras-style metrics (`bigtrain.metrics.get("auc")`)."""
from bigtrain.api.metrics import AUC, Accuracy, MeanError, Metric, TopKCategoricalAccuracy
from bigtrain.api.metrics import get_metric as get

__all__ = ["AUC", "Accuracy", "MeanError", "Metric", "TopKCategoricalAccuracy", "get"]
