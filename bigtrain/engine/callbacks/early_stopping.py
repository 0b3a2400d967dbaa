"""Stops training when a monitored quantity stops improving (Keras `EarlyStopping`)."""
from __future__ import annotations

from bigtrain.engine.callbacks._util import (check_auto_monitor, is_improvement,
                                             is_main_process, monitor_value, resolve_mode,
                                             worst_value)
from bigtrain.engine.callbacks.base import Callback


class EarlyStopping(Callback):
    """Sets `model.stop_training = True` after `patience` epochs without improvement.

    Runs on every rank (logs are identical on all ranks after reduction), so all ranks
    stop at the same epoch and none is left waiting in a collective.

    Args:
        monitor: log key to watch, e.g. "val_loss" or "val_accuracy".
        min_delta: smallest change that counts as an improvement (absolute value).
        patience: epochs without improvement after which training stops.
        mode: "min", "max" or "auto" (max for accuracy/AUC-like names, else min).
        baseline: the value to beat. Until `monitor` beats it, improvements do not reset
            the patience counter, so the first epoch that does not improve once
            `patience` epochs have passed stops training (Keras semantics).
        restore_best_weights: at the end of training, load the weights of the best epoch
            (`model.set_weights(model.get_weights())` snapshots; `get_weights` must return
            a copy). If no epoch was ever watched, nothing is restored.
        start_from_epoch: ignore epochs before this one (warm-up).
        verbose: 1 prints (on rank 0) when training stops and when weights are restored.

    Attributes:
        stopped_epoch: epoch (0-based) at which training was stopped, 0 if it was not.
        best_epoch: epoch (0-based) with the best monitored value.

    Example:
        >>> stop = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
        >>> stop.mode
        'min'
    """

    main_process_only = False
    # reads the weights on rank 0 from the loop's gather (needs_weights) and sets
    # stop_training on every rank itself: its reads must not wait for the other ranks
    runs_user_code = False

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0,
                 verbose: int = 0):
        super().__init__()
        if patience < 0 or start_from_epoch < 0:
            raise ValueError(f"patience and start_from_epoch must be >= 0, got {patience} "
                             f"and {start_from_epoch}.")
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self._auto = mode == "auto"  # checked against the fit's metrics at an epoch end
        self.mode = resolve_mode(monitor, mode)
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.verbose = verbose
        # Snapshots weights in on_epoch_end: ask the loop for the gathered full state.
        self.needs_weights = restore_best_weights
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = worst_value(self.mode)
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        if self._auto:  # Keras: before anything else, even a warm-up epoch's
            check_auto_monitor(self.monitor, "auto", self.params, "EarlyStopping")
            self._auto = False
        if epoch < self.start_from_epoch:
            return
        current = monitor_value(logs, self.monitor, "EarlyStopping")
        if current is None:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Nothing better seen yet: the weights of the first watched epoch are the best.
            self.best_weights, self.best_epoch = self._snapshot(), epoch
        self.wait += 1
        if is_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self._snapshot()
            # Restart the count only once the baseline is beaten as well.
            if self.baseline is None or is_improvement(current, self.baseline, self.mode,
                                                       self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        loud = self.verbose and is_main_process()
        if self.stopped_epoch > 0 and loud:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping ({self.monitor} did not "
                  f"improve for {self.wait} epochs)")
        if self.restore_best_weights and self.best_weights is not None:
            if loud:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self._restore(self.best_weights)

    def _live(self):
        """The running fit's LiveWeights when it spans several ranks, else None."""
        live = getattr(self.model, "live", None)
        return live if live is not None and live.distributed else None

    def _snapshot(self):
        """The weights now: Keras lists in one process; on several ranks, rank 0's copy of
        the full state (the loop gathered it for this epoch; other ranks hold shards or
        nothing, and keep True as a marker)."""
        live = self._live()
        if live is None:
            return self.model.get_weights()
        if not is_main_process():
            return True
        return {k: v.detach().clone() for k, v in live.full_state().items()}

    def _restore(self, best) -> None:
        """Load the best weights. On several ranks the live model may be sharded, split
        into stages or tensor-parallel, where loading a full state mid-fit is not possible:
        rank 0 hands it to the loop, and the fit returns it as its final weights."""
        live = self._live()
        if live is None:
            self.model.set_weights(best)
        elif is_main_process():
            live.final_state = best
