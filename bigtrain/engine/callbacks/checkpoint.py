"""Saves the model at the end of epochs, optionally only when it improves (Keras
`ModelCheckpoint`)."""
from __future__ import annotations

import os

from bigtrain.engine.callbacks._util import (is_improvement, monitor_value, resolve_mode,
                                             worst_value)
from bigtrain.engine.callbacks.base import Callback


class ModelCheckpoint(Callback):
    """Calls `model.save(path)` (or `model.save_weights(path)`) after epochs, on rank 0.

    `filepath` may hold `str.format` fields filled from the epoch (1-based, as Keras) and
    the epoch's logs: "ckpt/{epoch:02d}-{val_loss:.2f}.safetensors" -> "ckpt/03-0.41...".

    Args:
        filepath: where to save; folders are created as needed.
        monitor: log key that decides what "best" is (with save_best_only).
        save_best_only: save only when `monitor` improves on the best value so far; with
            a constant filepath the file then always holds the best model.
        mode: "min", "max" or "auto" (max for accuracy/AUC-like names, else min).
        save_weights_only: call `model.save_weights` instead of `model.save`.
        verbose: 1 prints a line when a checkpoint is written.

    Example:
        >>> ckpt = ModelCheckpoint("ckpt/best.safetensors", monitor="val_accuracy",
        ...                        save_best_only=True)
        >>> ckpt.mode
        'max'
    """

    #: Reads the weights on rank 0 only: the loop gathers the full state on every rank
    #: before `on_epoch_end`, so saving never starts a collective on one rank alone.
    needs_weights = True

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto",
                 save_weights_only: bool = False, verbose: int = 0):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = resolve_mode(monitor, mode)
        self.save_weights_only = save_weights_only
        self.verbose = verbose
        self.best = worst_value(self.mode)

    def on_train_begin(self, logs=None):
        self.best = worst_value(self.mode)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = monitor_value(logs, self.monitor, "ModelCheckpoint(save_best_only=True)")
            if current is None or not is_improvement(current, self.best, self.mode):
                return
            previous, self.best = self.best, current
            note = f"{self.monitor} improved from {previous:.5f} to {current:.5f}"
        else:
            note = ""
        path = self.format_path(epoch, logs)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: {note + ', ' if note else ''}saved to {path}")

    def format_path(self, epoch: int, logs: dict) -> str:
        """`filepath` with {epoch} (1-based) and log fields filled in."""
        try:
            return self.filepath.format(**{**logs, "epoch": epoch + 1})
        except KeyError as e:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} uses the field {e}, "
                           f"which is not in the logs {sorted(logs)}; use one of those names "
                           f"or 'epoch'.") from None
