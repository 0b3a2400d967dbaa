"""Keras's `model.metrics`, `get_metrics_result()` and `reset_metrics()`.

bigtrain's metrics start fresh in every fit epoch, evaluate and *_on_batch call (as
Keras's are reset there), so what Keras's metric objects hold between calls is the
values the latest call gave: the model keeps those logs (`Model.metric_logs`), and each
`LoggedMetric` reads its part of them. After a fit that validated in its last epoch they
are the validation's values, without the "val_" prefix, as Keras's evaluate inside fit
leaves them.

Example:
    model.evaluate(x, y)
    [m.name for m in model.metrics]     # ["loss", "compile_metrics"]
    model.get_metrics_result()          # {"loss": 0.41, "mae": 0.52}
"""
from __future__ import annotations


class LoggedMetric:
    """One entry of `model.metrics`: "loss", "compile_metrics" (a dict of the compiled
    metrics' values) or an output's "<name>_loss"."""

    def __init__(self, model, name: str):
        self._model, self.name = model, name

    def __repr__(self) -> str:
        return f"<LoggedMetric name={self.name}>"

    def result(self):
        """The value the latest call gave (0.0 before any, and after reset_metrics)."""
        logs = self._model.metric_logs or {}
        if self.name != "compile_metrics":
            return logs.get(self.name, 0.0)
        tracked = set(self._model.metrics_names)
        return {k: v for k, v in logs.items() if k not in tracked}

    def reset_state(self) -> None:
        """Zero this metric's values, as Keras's `reset_state`."""
        logs = self._model.metric_logs or {}
        for key in self.result() if self.name == "compile_metrics" else [self.name]:
            if key in logs:
                logs[key] = 0.0


def logged_metrics(model) -> list[LoggedMetric]:
    """`model.metrics`: one per entry of `model.metrics_names` ([] before compile)."""
    return [LoggedMetric(model, name) for name in model.metrics_names]


def metrics_result(model) -> dict[str, float]:
    """`get_metrics_result()`: the latest call's values as one flat dict, as Keras's."""
    return dict(model.metric_logs or {})


def fit_logs(history, validation_freq) -> dict[str, float]:
    """The logs Keras's metrics hold after a fit: its last epoch's validation values (the
    "val_" prefix dropped) where that epoch validated, else its training values."""
    logs = {k: v[-1] for k, v in history.history.items() if v}
    if not history.epoch:
        return {}
    last = history.epoch[-1] + 1  # 1-based, as validation_freq counts epochs
    validated = last in validation_freq if isinstance(validation_freq, (list, tuple, set)) \
        else last % int(validation_freq) == 0
    val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
    if validated and val:
        return val
    return {k: v for k, v in logs.items() if not k.startswith("val_")}
