"""Stop a user's training script at its first `fit` and hand over what it was about to train.

`bigtrain verify SCRIPT` runs the script inside `capture_fit()`; the first `model.fit(...)`
then raises `FitCaptured` (before any process starts) carrying the compiled model with its
initial weights, the prepared data and the loop settings. `FitCaptured` derives from
BaseException so a script's own `except Exception:` does not swallow it.

Example:
    with capture_fit():
        try:
            runpy.run_path("train.py", run_name="__main__")
        except FitCaptured as fit:
            model, data, config = fit.model, fit.data, fit.config
"""
from __future__ import annotations

import contextlib
import contextvars

_CAPTURING = contextvars.ContextVar("bigtrain_capture_fit", default=False)


class FitCaptured(BaseException):
    """The first fit call inside `capture_fit()`.

    Attributes:
        model: the compiled bigtrain Model (weights as the script initialised them).
        data, val: training and validation data (engine ArrayData) or None.
        config: the FitConfig fit built (batch size, accumulation, precision, seed...).
        strategy, devices: what the script asked for.
    """

    def __init__(self, model, data, val, config, strategy, devices):
        super().__init__("model.fit was called inside capture_fit()")
        self.model, self.data, self.val, self.config = model, data, val, config
        self.strategy, self.devices = strategy, devices


@contextlib.contextmanager
def capture_fit():
    """Within this block, the first fit raises FitCaptured instead of training."""
    token = _CAPTURING.set(True)
    try:
        yield
    finally:
        _CAPTURING.reset(token)


def stop_if_capturing(model, data, val, config, strategy, devices) -> None:
    """Called by fit once its inputs are checked: raise FitCaptured inside capture_fit()."""
    if _CAPTURING.get():
        raise FitCaptured(model, data, val, config, strategy, devices)
