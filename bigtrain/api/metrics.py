"""Keras metrics: what compile(metrics=[...]) and `bigtrain.metrics.get` read.

The classes live in `metrics_base.py` (the `Metric` base and the first metrics) and
`metrics_keras.py` (Keras's other classes); `metrics_config.py` maps Keras's names and
metric objects onto them. Each metric keeps its running sums in one small tensor (`state`),
so ranks reduce metrics with a single all-reduce of the concatenated states.
"""
from __future__ import annotations

import copy

from bigtrain.api.metrics_base import (AUC, Accuracy, MeanError, Metric, OutputLoss,
                                       TopKCategoricalAccuracy)
from bigtrain.api.metrics_config import metric_from

__all__ = ["AUC", "Accuracy", "MeanError", "Metric", "OutputLoss", "TopKCategoricalAccuracy",
           "fresh_metric", "get_metric"]


def get_metric(metric) -> Metric:
    """A Metric from a Keras name (a new one), a Keras metric object (its bigtrain
    counterpart, same arguments and name) or a Metric instance (itself). A name is also the
    metric's key in the History and the logs, as Keras logs it ("acc" stays "acc",
    "mean_absolute_error" is not shortened to "mae")."""
    if isinstance(metric, Metric):
        return metric
    return metric_from(metric)


def fresh_metric(metric) -> Metric:
    """A Metric of its own for one output of one run: a name's, or a copy of a Metric
    object, so that the object the user compiled keeps its name and state, and each output
    counts its own. (A deep copy: a subclass may keep more than `state`; the ranks get the
    metrics pickled anyway, which asks as much of them.)"""
    m = get_metric(metric)
    return copy.deepcopy(m) if m is metric else m
