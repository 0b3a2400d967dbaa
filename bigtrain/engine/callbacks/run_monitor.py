"""RunMonitor: what the run record needs even when a fit ends badly.

The loop adds one to the callbacks of every fit with a `run_dir` (rank 0 only). It keeps the
history of the finished epochs, the per-step losses of the current epoch (read from the
epoch's Tally when a record is written, not per step: a host read of the device per step
made a short run 1.36x slower), per-layer gradient health sampled every k optimizer steps
(bigtrain.diagnose.grad_health) and how the run stopped; at every epoch end it writes a
partial `run.json` (no collectives), so a process killed outright still leaves its history
behind, and the loop asks it to write one when the fit raises, is interrupted or loses a
rank.

Example (what the loop does):
    monitor = RunMonitor(save=lambda m: write_local_record(task, strategy, timing, m))
    callbacks = CallbackList([*task.callbacks, monitor], owner, params, is_main=True)
    tally = Tally(metrics, activations, device, keep_step_losses=True)  # each epoch
    monitor.watch(tally, first_step=skip)
"""
from __future__ import annotations

from bigtrain.diagnose.grad_health import GradHealth
from bigtrain.engine.callbacks.base import Callback

SAMPLES_PER_EPOCH = 8   # gradient-health samples aimed for per epoch
MIN_EVERY = 16          # but none closer than this many steps (a sample costs a short step
#                         about its own time again: every 2nd step made a fit about 1.25x slower)
MAX_EVERY = 50          # and at least one in this many steps
MIN_RUN_SAMPLES = 4     # a short run still gets this many (the dead-unit check's window)
#: words in an error that mean another rank went away (gloo / c10d messages)
LOST_RANK_WORDS = ("connection closed", "connection reset", "broken pipe", "by peer",
                   "distnetworkerror", "hangdetected", "timed out", "timeout")


class RunMonitor(Callback):
    """Collects the run record's late-stop figures on rank 0.

    Args:
        save: `save(monitor)` writes the rank-local record (called at epoch ends and by
            `failed`).
        every: sample gradient health every this many optimizer steps (default:
            `sample_every`).
    """

    wants_batch_logs = False  # the step losses come from the epoch's Tally (`watch`)
    runs_user_code = False  # changes neither the weights, the rates nor stop_training

    def __init__(self, save=None, every: int | None = None):
        super().__init__()
        self.save, self.every = save, every
        self.health: GradHealth | None = None
        self.history: dict[str, list[float]] = {}
        self._tally = None  # the current epoch's Tally (keeps its step losses)
        self._first_step = 0  # the epoch's step number of the tally's first step
        self.epoch = 0
        self.stop: dict | None = None

    def on_train_begin(self, logs=None):
        steps = int(self.params.get("steps") or 1)
        every = self.every or sample_every(steps, int(self.params.get("epochs") or 1))
        net = getattr(self.model, "net", None)
        if net is not None:
            self.health = GradHealth(net, every)
            if not self.health.attach(self.model.optimizer):
                self.health = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self._tally = epoch, None

    def watch(self, tally, first_step: int = 0) -> None:
        """Read this epoch's step losses from `tally` (made with keep_step_losses=True),
        whose first step is the epoch's step `first_step` (a resumed epoch skips some)."""
        self._tally, self._first_step = tally, first_step

    @property
    def step(self) -> int | None:
        """The epoch's last step that was trained (None before its first)."""
        if self._tally is None or not self._tally.steps:
            return None
        return self._first_step + self._tally.steps - 1

    @property
    def step_losses(self) -> list[float]:
        """Each step's mean loss this epoch (a NaN/Inf step stays non-finite); reads the
        device."""
        if self._tally is None:
            return []
        try:
            return self._tally.step_losses()
        except RuntimeError:  # a device that failed the fit may not be readable either
            return []

    def on_epoch_end(self, epoch, logs=None):
        # The History keeps a NaN-stopped epoch (Keras); the record keeps finished ones only,
        # and reads the stop from `stop` and the step losses.
        stopped = self.stop is not None and self.stop["reason"] == "nan_loss"
        for k, v in ({} if stopped else logs or {}).items():
            if isinstance(v, (list, tuple)) or getattr(v, "ndim", 0) > 0:
                continue  # a value per class or threshold: the record keeps scalars
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


def sample_every(steps: int, epochs: int) -> int:
    """Optimizer steps between gradient-health samples: about SAMPLES_PER_EPOCH per epoch
    of `steps`, none closer than MIN_EVERY, at least one in MAX_EVERY, and at least
    MIN_RUN_SAMPLES in a run of `epochs` (closer samples for a short run)."""
    every = max(MIN_EVERY, min(MAX_EVERY, steps // SAMPLES_PER_EPOCH))
    return max(1, min(every, steps * epochs // MIN_RUN_SAMPLES))
