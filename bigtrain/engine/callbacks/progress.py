"""Keras-style progress display: a live rich bar per epoch, then one line of logs."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)

from bigtrain.engine.callbacks._util import format_logs
from bigtrain.engine.callbacks.base import Callback

# Without a known number of steps, a plain (non-terminal) progress line at most this often.
_UNKNOWN_TOTAL_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """'0.42s', '12.3s', '2m05s', '1h02m03s'.

    Example:
        >>> format_duration(125.2)
        '2m05s'
    """
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class ProgressBar(Callback):
    """Shows training progress on rank 0.

    verbose=1 on a terminal: a live bar per epoch ("Epoch i/N", batches done/total,
    samples/s, ETA) replaced at the end of the epoch by one line with the epoch time and all
    logs (`loss: 0.1234 - accuracy: 0.9100 - val_loss: ...`). When stdout is not a terminal
    (CI, pipes, files) no live bar is drawn: only the epoch lines, plus, for epochs longer
    than `plain_after_s`, a plain progress line each time another 10% of the batches is done.
    verbose=2: the epoch lines only. verbose=0: silent.

    The bar reads no per-batch logs (`wants_batch_logs = False`): it counts samples from
    `params["batch_size"]`, so it never makes the loop synchronise with the device every
    step.

    Args:
        verbose: 0, 1 or 2 as above; None takes `params["verbose"]` from the loop.
        file: stream to write to (default: the current sys.stdout).
        plain_after_s: in non-terminal mode, print progress lines only once an epoch has
            been running this long (seconds), so short epochs print one line.

    Example:
        >>> model.fit(x, y, epochs=3, callbacks=[ProgressBar(verbose=2)])  # doctest: +SKIP
        Epoch 1/3 - 125/125 - 1.2s - 3318 samples/s - loss: 0.6931 - val_loss: 0.6012
    """

    wants_batch_logs = False
    runs_user_code = False  # changes neither the weights, the rates nor stop_training

    def __init__(self, verbose: int | None = 1, *, file=None, plain_after_s: float = 10.0):
        super().__init__()
        if verbose not in (None, 0, 1, 2):
            raise ValueError(f"ProgressBar verbose must be 0, 1 or 2, got {verbose!r}.")
        self.verbose = verbose
        self.file = file
        self.plain_after_s = plain_after_s
        self._console = None
        self._progress = None
        self._task = None

    # -- state of the current epoch -------------------------------------------------------
    def _level(self) -> int:
        return self.params.get("verbose", 1) if self.verbose is None else self.verbose

    def on_train_begin(self, logs=None):
        self._console = Console(file=self.file, highlight=False, soft_wrap=True)

    def on_epoch_begin(self, epoch, logs=None):
        if self._console is None:  # hooks driven without on_train_begin
            self.on_train_begin()
        self._epoch, self._t0 = epoch, time.perf_counter()
        self._done, self._last_plain = 0, (0, self._t0)  # (decile, time)
        self._steps = self.params.get("steps")
        if self._level() == 1 and self._live():
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                console=self._console, transient=True)
            self._task = self._progress.add_task(self._title(), total=self._steps, rate="")
            self._progress.start()

    def on_train_batch_end(self, batch, logs=None):
        self._done += 1
        if self._level() != 1:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=self._done, rate=self._rate_text())
        else:
            self._maybe_plain_line()

    def on_epoch_end(self, epoch, logs=None):
        self._stop_live()
        if self._level() == 0:
            return
        elapsed = time.perf_counter() - self._t0
        steps = f"{self._done}/{self._steps}" if self._steps else f"{self._done}"
        parts = [self._title(), steps, format_duration(elapsed)]
        if self._samples():
            parts.append(self._rate_text())
        if logs:
            parts.append(format_logs(logs))
        self._print(" - ".join(parts))

    def on_train_end(self, logs=None):
        self._stop_live()

    # -- internals -------------------------------------------------------------------------
    def _live(self) -> bool:
        return self._console.is_terminal or self._console.is_jupyter

    def _title(self) -> str:
        total = self.params.get("epochs")
        return f"Epoch {self._epoch + 1}/{total}" if total else f"Epoch {self._epoch + 1}"

    def _rate_text(self) -> str:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        return f"{self._samples() / elapsed:.0f} samples/s"

    def _samples(self) -> int:
        """Samples of the batches done this epoch (the data's last batch may be short)."""
        done = self._done * (self.params.get("batch_size") or 0)
        total = self.params.get("samples")
        return done if total is None else min(done, total)

    def _print(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False)

    def _stop_live(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._task = None, None

    def _maybe_plain_line(self) -> None:
        """Non-terminal verbose=1: a line per 10% of a long epoch, never a live bar."""
        now = time.perf_counter()
        if now - self._t0 < self.plain_after_s:
            return
        last_decile, last_time = self._last_plain
        if self._steps:
            decile = 10 * self._done // self._steps
            if decile <= last_decile or self._done == self._steps:
                return  # the epoch line reports the last batch
            eta = (now - self._t0) / self._done * (self._steps - self._done)
            self._last_plain = (decile, now)
            self._print(f"{self._title()} - {self._done}/{self._steps} - "
                        f"{self._rate_text()} - ETA {format_duration(eta)}")
        elif now - last_time >= _UNKNOWN_TOTAL_INTERVAL_S:
            self._last_plain = (last_decile, now)
            self._print(f"{self._title()} - {self._done} batches - {self._rate_text()}")


class ProgbarLogger(ProgressBar):
    """Keras's name for the progress display: a ProgressBar at fit's `verbose` level.

    Example:
        >>> model.fit(x, y, verbose=2, callbacks=[ProgbarLogger()])  # doctest: +SKIP
    """

    def __init__(self):
        super().__init__(verbose=None)
