"""Lowers the learning rate when a monitored quantity plateaus (Keras
`ReduceLROnPlateau`)."""
from __future__ import annotations

from bigtrain.engine.callbacks._util import (check_auto_monitor, get_lrs, is_improvement,
                                             is_main_process, monitor_value, resolve_mode,
                                             set_lrs, worst_value)
from bigtrain.engine.callbacks.base import Callback


class ReduceLROnPlateau(Callback):
    """Multiplies every param group's learning rate by `factor` after `patience` epochs
    without improvement, never going below `min_lr`.

    Runs on every rank so the learning rate stays identical everywhere (the logs it reads
    are already identical across ranks).

    Args:
        monitor: log key to watch.
        factor: multiplier of the learning rate, in (0, 1).
        patience: epochs without improvement before reducing.
        min_delta: smallest change that counts as an improvement.
        cooldown: epochs after a reduction during which no epoch counts toward
            `patience` (Keras's rule: the counter falls at the start of each epoch's check,
            so the last cooldown epoch already counts).
        min_lr: lower bound of the learning rate.
        mode: "min", "max" or "auto" (max for accuracy/AUC-like names, else min).
        verbose: 1 prints (on rank 0) each reduction.

    Example:
        >>> cb = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5)
        >>> cb.mode
        'min'
    """

    main_process_only = False

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: str = "auto", verbose: int = 0):
        super().__init__()
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau factor must be in (0, 1) to reduce the "
                             f"learning rate, got {factor}.")
        if patience < 0 or cooldown < 0 or min_lr < 0:
            raise ValueError(f"patience, cooldown and min_lr must be >= 0, got {patience}, "
                             f"{cooldown}, {min_lr}.")
        self.monitor, self.factor, self.patience = monitor, factor, patience
        self.min_delta, self.cooldown, self.min_lr = abs(min_delta), cooldown, min_lr
        self._auto = mode == "auto"  # checked against the fit's metrics at an epoch end
        self.mode = resolve_mode(monitor, mode)
        self.verbose = verbose
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best = worst_value(self.mode)
        self.wait = 0
        self.cooldown_counter = 0

    def on_epoch_end(self, epoch, logs=None):
        """Keras's rule, step for step: log the epoch's learning rate, then count it."""
        if self._auto:
            check_auto_monitor(self.monitor, "auto", self.params, "ReduceLROnPlateau")
            self._auto = False
        if logs is not None:
            logs["learning_rate"] = get_lrs(self.model.optimizer)[0]  # as Keras's History
        current = monitor_value(logs, self.monitor, "ReduceLROnPlateau")
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if is_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter, self.wait = self.cooldown, 0

    def _reduce(self, epoch: int) -> bool:
        """Lower every learning rate above `min_lr`; whether any changed."""
        old = get_lrs(self.model.optimizer)
        new = [max(lr * self.factor, self.min_lr) if lr > self.min_lr else lr for lr in old]
        if new == old:
            return False
        set_lrs(self.model.optimizer, new)
        if self.verbose and is_main_process():
            print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                  f"{', '.join(f'{lr:.4g}' for lr in new)}.")
        return True
