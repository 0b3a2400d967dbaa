"""RunMonitor: what the run record needs even when a fit ends badly.

The loop adds one to the callbacks of every fit with a `run_dir` (rank 0 only). It keeps the
history of the finished epochs, the per-step losses of the current epoch, per-layer gradient
health sampled every k optimizer steps (bigtrain.diagnose.grad_health) and how the run
stopped; at every epoch end it writes a partial `run.json` (no collectives), so a process
killed outright still leaves its history behind, and the loop asks it to write one when the
fit raises, is interrupted or loses a rank.

Example (what the loop does):
    monitor = RunMonitor(save=lambda m: write_local_record(task, strategy, timing, m))
    callbacks = CallbackList([*task.callbacks, monitor], owner, params, is_main=True)
"""
from __future__ import annotations

import math

from bigtrain.diagnose.grad_health import GradHealth
from bigtrain.engine.callbacks.base import Callback

SAMPLES_PER_EPOCH = 8   # gradient-health samples aimed for per epoch
MAX_EVERY = 50          # but at least one in this many steps
#: words in an error that mean another rank went away (gloo / c10d messages)
LOST_RANK_WORDS = ("connection closed", "connection reset", "broken pipe", "by peer",
                   "distnetworkerror", "hangdetected", "timed out", "timeout")


class RunMonitor(Callback):
    """Collects the run record's late-stop figures on rank 0.

    Args:
        save: `save(monitor)` writes the rank-local record (called at epoch ends and by
            `failed`).
        every: sample gradient health every this many optimizer steps (default: about
            SAMPLES_PER_EPOCH times per epoch).
    """

    wants_batch_logs = True  # the running loss, for the per-step loss (a host sync per step)
    runs_user_code = False  # changes neither the weights, the rates nor stop_training

    def __init__(self, save=None, every: int | None = None):
        super().__init__()
        self.save, self.every = save, every
        self.health: GradHealth | None = None
        self.history: dict[str, list[float]] = {}
        self.step_losses: list[float] = []
        self._mean = math.nan  # the epoch's running mean loss after the last step
        self.epoch, self.step = 0, None
        self.stop: dict | None = None

    def on_train_begin(self, logs=None):
        steps = int(self.params.get("steps") or 1)
        every = self.every or max(1, min(MAX_EVERY, steps // SAMPLES_PER_EPOCH))
        net = getattr(self.model, "net", None)
        if net is not None:
            self.health = GradHealth(net, every)
            if not self.health.attach(self.model.optimizer):
                self.health = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step, self.step_losses = epoch, None, []

    def on_train_batch_end(self, batch, logs=None):
        # The logs hold the epoch's running mean loss (as Keras's); the step's own loss is
        # the change of the running sum, batches taken as equal in size (exact but for the
        # data's last, shorter batch). A NaN/Inf step stays non-finite.
        self.step = batch
        mean, k = float((logs or {}).get("loss", math.nan)), len(self.step_losses)
        self.step_losses.append(mean if k == 0 else (k + 1) * mean - k * self._mean)
        self._mean = mean

    def on_epoch_end(self, epoch, logs=None):
        # The History keeps a NaN-stopped epoch (Keras); the record keeps finished ones only,
        # and reads the stop from `stop` and the step losses.
        stopped = self.stop is not None and self.stop["reason"] == "nan_loss"
        for k, v in ({} if stopped else logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        if self.save is not None:
            self.save(self)

    def on_train_end(self, logs=None):
        if self.health is not None:
            self.health.detach()

    def stopped(self, reason: str, message: str = "") -> None:
        """The loop stopped the run on purpose (a NaN/Inf loss)."""
        self.stop = {"reason": reason, "epoch": self.epoch, "step": self.step,
                     "message": message}

    def failed(self, exc: BaseException, save=None) -> None:
        """The fit is leaving with `exc`: record why and write the record now (with
        `save(monitor)` when given, else the epoch-end writer)."""
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        elif any(w in text.lower() for w in LOST_RANK_WORDS):
            reason = "rank_lost"
        else:
            reason = "exception"
        self.stop = {"reason": reason, "epoch": self.epoch, "step": self.step,
                     "message": text[:500]}
        save = save or self.save
        if save is not None and not isinstance(exc, KeyboardInterrupt):
            save(self)
        elif save is not None:  # Ctrl-C: write what is known, skip the data profile
            self.save(self)

    def fields(self) -> dict:
        """The RunRecord fields this monitor fills."""
        stop = self.stop or {"reason": "running", "epoch": self.epoch, "step": self.step,
                             "message": ""}
        return {"stop": stop, "step_losses": list(self.step_losses),
                "layer_health": {} if self.health is None else self.health.summary()}
