"""Records the logs of every epoch (Keras `History`, returned by `fit`)."""
from __future__ import annotations

from bigtrain.engine.callbacks.base import Callback


class History(Callback):
    """`history[key]` is the list of that log's values, one per epoch; `epoch` the list of
    epoch indices (0-based); `stop_reason` "nan_loss" when TerminateOnNaN stopped the fit,
    else None. Sets `model.history = self` as training goes.

    Runs on every rank, so `fit` returns the same history everywhere.

    Example:
        >>> h = History()
        >>> h.on_train_begin(); h.on_epoch_end(0, {"loss": 0.5}); h.on_epoch_end(1, {"loss": 0.25})
        >>> h.history, h.epoch
        ({'loss': [0.5, 0.25]}, [0, 1])
    """

    main_process_only = False

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.stop_reason: str | None = None

    def on_train_begin(self, logs=None):
        # Keep `history` across fit() calls (Keras does too); only the epoch list restarts.
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self
