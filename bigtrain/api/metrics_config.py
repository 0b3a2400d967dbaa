"""What compile(metrics=[...]) reads: Keras's metric names and Keras metric objects, each
mapped onto its bigtrain class.

A name gives a new metric logged under that name, as Keras's compile does ("mse" logs
"mse"); a Keras object gives the bigtrain class of the same name, built from the object's
`get_config()` (its `name=` is the log key).

Example:
    metric_from("precision")                 # Precision(name="precision")
    metric_from(keras.metrics.AUC(curve="PR", name="pr"))  # AUC(curve="PR", name="pr")
"""
from __future__ import annotations

import re

from bigtrain.api import metrics_keras as mk
from bigtrain.api.metrics_base import AUC, Accuracy, Metric, TopKCategoricalAccuracy

#: Keras's metric class name -> bigtrain's class (its constructor takes Keras's arguments)
KERAS_CLASSES = {cls.__name__: cls for cls in mk.CLASSES + (AUC, TopKCategoricalAccuracy)}


def _snake(name: str) -> str:
    """Keras's to_snake_case, for the class names above ("F1Score" -> "f1_score")."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _names() -> dict:
    """The strings keras.metrics.get reads (each class's name and its snake_case, and
    Keras's short aliases), plus compile's "accuracy" / "acc" (chosen from the shapes)."""
    names = {}
    for name, cls in KERAS_CLASSES.items():
        names[name] = names[_snake(name)] = cls
    for short, cls in {"mse": mk.MeanSquaredError, "mae": mk.MeanAbsoluteError,
                       "mape": mk.MeanAbsolutePercentageError,
                       "bce": mk.BinaryCrossentropy}.items():
        names[short] = names[short.upper()] = cls
    names["accuracy"] = names["acc"] = Accuracy
    return names


#: name -> the class whose default instance it gives
NAMES = _names()


def metric_from(metric) -> Metric:
    """A new bigtrain Metric for a Keras metric name or a Keras metric object.

    Raises:
        ValueError: for a name or Keras class bigtrain does not read, naming those it reads.
    """
    if isinstance(metric, str) and (metric in NAMES or metric.lower() in ("accuracy", "acc")):
        m = NAMES.get(metric, Accuracy)()  # Keras reads "Accuracy" / "ACC" as "accuracy"
        m.name = metric  # Keras's compile logs a metric under the string it was given
        return m
    if _is_keras(metric) and type(metric).__name__ in KERAS_CLASSES:
        return _from_keras(metric)
    raise ValueError(f"unknown metric {metric!r}{_hint(metric)}; valid names: "
                     f"{', '.join(sorted(NAMES, key=str.lower))}; or a bigtrain.metrics object "
                     f"({', '.join(f'{c}()' for c in sorted(KERAS_CLASSES))}, MeanError(), "
                     "or a subclass of bigtrain.metrics.Metric for a metric of your own)")


def _from_keras(metric) -> Metric:
    """The bigtrain class of the Keras object's class, built from its `get_config()`."""
    config = dict(metric.get_config())
    config.pop("dtype", None)  # bigtrain's metrics sum in float64
    cls = KERAS_CLASSES[type(metric).__name__]
    try:
        return cls(**config)
    except TypeError as e:  # a config key this Keras version adds and bigtrain lacks
        raise ValueError(f"keras.metrics.{cls.__name__} with config {config} is not read by "
                         f"bigtrain ({e}); use bigtrain.metrics.{cls.__name__} instead") from e


def _is_keras(metric) -> bool:
    return any(c.__module__.startswith("keras") for c in type(metric).__mro__)


def _hint(metric) -> str:
    if _is_keras(metric):
        return (f" (keras.metrics.{type(metric).__name__} has no bigtrain counterpart; the "
                "Keras metric classes bigtrain reads are those listed below)")
    if callable(metric):
        return (" (a metric function is not read by bigtrain: a Metric subclass's update "
                "adds sums to a state that ranks add up)")
    return ""

