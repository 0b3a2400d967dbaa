"""Sets the learning rate at the start of every epoch from a function (Keras
`LearningRateScheduler`)."""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from bigtrain.engine.callbacks._util import get_lrs, is_main_process, set_lrs
from bigtrain.engine.callbacks.base import Callback


class LearningRateScheduler(Callback):
    """At each epoch begin, sets each param group's lr to `schedule(epoch, lr)`.

    Runs on every rank so the learning rate stays identical everywhere; `schedule` must
    therefore be deterministic. With several param groups it is applied to each group's
    current rate.

    Args:
        schedule: f(epoch, lr) -> new lr (epoch 0-based, lr a float); a one-argument
            f(epoch) -> lr is accepted too.
        verbose: 1 prints (on rank 0) the new rate each epoch.

    Example:
        >>> cb = LearningRateScheduler(lambda epoch, lr: lr if epoch < 10 else lr * 0.9)
    """

    main_process_only = False

    def __init__(self, schedule: Callable, verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> lr, got {schedule!r}.")
        self.schedule = schedule
        self.verbose = verbose

    def _call(self, epoch: int, lr: float) -> float:
        try:
            new = self.schedule(epoch, lr)
        except TypeError:  # Keras also accepts schedule(epoch)
            new = self.schedule(epoch)
        if (isinstance(new, bool) or not isinstance(new, numbers.Real)
                or math.isnan(new) or new < 0):
            raise ValueError(f"The schedule must return a non-negative float learning rate; "
                             f"for epoch {epoch} it returned {new!r}.")
        return float(new)

    def on_epoch_begin(self, epoch, logs=None):
        new = [self._call(epoch, lr) for lr in get_lrs(self.model.optimizer)]
        set_lrs(self.model.optimizer, new)
        if self.verbose and is_main_process():
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                  f"{', '.join(f'{lr:.4g}' for lr in new)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # the History gets the epoch's rate, as Keras's does
            logs["learning_rate"] = get_lrs(self.model.optimizer)[0]
