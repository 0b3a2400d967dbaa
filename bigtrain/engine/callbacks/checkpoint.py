"""Saves the model at the end of epochs or every few batches, optionally only when it
improves (Keras `ModelCheckpoint`)."""
from __future__ import annotations

import os
import warnings

from bigtrain.engine.callbacks._util import (check_auto_monitor, is_improvement,
                                             resolve_mode, worst_value)
from bigtrain.engine.callbacks.base import Callback


class ModelCheckpoint(Callback):
    """Calls `model.save(path)` (or `model.save_weights(path)`) after epochs, on rank 0.

    `filepath` may hold `str.format` fields filled from the epoch (1-based, as Keras), the
    batch (1-based, with an integer `save_freq`) and the logs:
    "ckpt/{epoch:02d}-{val_loss:.2f}.safetensors" -> "ckpt/03-0.41...".

    As in Keras, `best` is kept across fits: a checkpoint reused by a second fit overwrites
    the best file only with a better model. A fit that resumes from its checkpoint_dir
    starts from the best value of the epochs that checkpoint had trained.

    Args:
        filepath: where to save; folders are created as needed.
        monitor: log key that decides what "best" is (with save_best_only).
        save_best_only: save only when `monitor` improves on the best value so far; with
            a constant filepath the file then always holds the best model. When `monitor`
            is not in the logs, a warning is given and the model saved (Keras).
        mode: "min", "max" or "auto" (max for accuracy/AUC-like names, else min; a
            monitor that is neither the loss nor a metric of the fit raises ValueError).
        save_weights_only: call `model.save_weights` instead of `model.save`.
        verbose: 1 prints a line for each epoch's decision and save.
        save_freq: "epoch", or an int: save every that many batches (counted across epochs,
            with the batch's logs: running means of the epoch so far). On several ranks
            rank 0 saves the whole model as at an epoch end: every rank then waits after
            each batch (an all-reduce), so that the ranks of a strategy that splits the
            weights join their gather when it saves.
        initial_value_threshold: the value `monitor` must beat for the first save (with
            save_best_only).

    Example:
        >>> ckpt = ModelCheckpoint("ckpt/best.safetensors", monitor="val_accuracy",
        ...                        save_best_only=True)
        >>> ckpt.mode
        'max'
    """

    #: Reads the weights on rank 0 only: the loop gathers the full state on every rank
    #: before `on_epoch_end`, so saving never starts a collective on one rank alone.
    needs_weights = True
    runs_user_code = False  # changes neither the weights, the rates nor stop_training

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss",
                 verbose: int = 0, save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto",
                 save_freq: str | int = "epoch",
                 initial_value_threshold: float | None = None):
        super().__init__()
        if save_freq != "epoch" and (isinstance(save_freq, bool)
                                     or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"Unrecognized save_freq: {save_freq!r}; expected 'epoch' or a "
                             "positive number of batches.")
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self._auto = mode == "auto"
        self.mode = resolve_mode(monitor, mode)
        self.save_weights_only = save_weights_only
        self.verbose = verbose
        self.save_freq = save_freq
        # Set once, as Keras: a later fit must beat the best of the earlier ones.
        self.best = (worst_value(self.mode) if initial_value_threshold is None
                     else float(initial_value_threshold))
        self._since_save, self._last_batch, self._epoch = 0, None, 0
        # batch logs only when saving by batches (they cost a device sync per step)
        self.wants_batch_logs = save_freq != "epoch"
        # saving by batches: on several ranks the loop treats the batch hook as a user's
        # (bigtrain.engine.callbacks.rank0_weights): the other ranks wait after it and join
        # the gather of split weights that saving reads, and its logs are the global batch's
        self.runs_user_code = save_freq != "epoch"

    def on_train_begin(self, logs=None):
        """A fit resumed from its checkpoint_dir (a restarted job builds this callback
        anew): the best value so far is the best of the epochs trained before it, so that
        the first epoch after a crash overwrites the best file only with a better model."""
        done = (self.params or {}).get("resumed_history") or {}
        values = [v for v in done.get(self.monitor, []) if isinstance(v, (int, float))]
        if self.save_best_only and values:
            best = min(values) if self.mode == "min" else max(values)
            if is_improvement(best, self.best, self.mode):
                self.best = float(best)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        # batches seen since the last save, counted across epochs (Keras's rule)
        new_epoch = self._last_batch is None or batch <= self._last_batch
        self._since_save += batch + 1 if new_epoch else batch - self._last_batch
        self._last_batch = batch
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(self._epoch, batch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if self._auto:  # Keras decides on the first epoch end, with the fit's metrics known
            check_auto_monitor(self.monitor, "auto", self.params, "ModelCheckpoint")
            self._auto = False
        if self.save_freq == "epoch":
            self._save(epoch, None, logs or {})

    def _save(self, epoch: int, batch: int | None, logs: dict) -> None:
        path = self.format_path(epoch, logs, batch)
        if not self._should_save(epoch, logs, path):
            return
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)

    def _should_save(self, epoch: int, logs: dict, path: str) -> bool:
        """Keras's decision, and its messages with verbose=1."""
        if not self.save_best_only:
            self._say(f"Epoch {epoch + 1}: saving model to {path}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ModelCheckpoint: can save the best model only with "
                          f"{self.monitor!r} in the logs (available: {sorted(logs)}); saving "
                          "every time instead. Check the monitor name, and pass validation "
                          "data to fit() for 'val_*' names.", RuntimeWarning, stacklevel=3)
            return True
        current = float(current)
        if is_improvement(current, self.best, self.mode):
            self._say(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{current:.5f}, saving model to {path}")
            self.best = current
            return True
        self._say(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
        return False

    def _say(self, line: str) -> None:
        if self.verbose:
            print(line)

    def format_path(self, epoch: int, logs: dict, batch: int | None = None) -> str:
        """`filepath` with {epoch} (1-based), {batch} (1-based) and log fields filled in."""
        fields = {**logs, "epoch": epoch + 1}
        if batch is not None and "batch" not in logs:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as e:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} uses the field {e}, "
                           f"which is not in the logs {sorted(logs)}; use one of those names "
                           f"or 'epoch'.") from None
