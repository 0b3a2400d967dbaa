"""Streams epoch logs to a CSV file, one row per epoch (Keras `CSVLogger`)."""
from __future__ import annotations

import csv
import os
import warnings

from bigtrain.engine.callbacks.base import Callback


class CSVLogger(Callback):
    """Writes `epoch` and every log value of each epoch as a CSV row (rank 0 only).

    The columns are fixed by the first epoch's logs (`epoch` first, then the log keys in
    sorted order, as Keras does; when they hold no `val_*` key, a `val_<key>` column is
    added for each, so epochs that validate later, as with `validation_freq`, keep their
    values), or by the existing header when appending; a value missing from an epoch's
    logs is written as "NA".
    Each row is flushed at once, so the file is readable while training runs.

    Args:
        filename: path of the CSV file; its folder is created if needed.
        separator: the field delimiter.
        append: add rows to an existing file (header written only if the file is empty)
            instead of overwriting it. A fit resumed from its checkpoint_dir needs no
            append: it keeps the rows of the epochs before the checkpoint's and writes
            after them (rows of later epochs, from the run that stopped, are dropped).

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[CSVLogger("runs/log.csv")])  # doctest: +SKIP
        # runs/log.csv:
        # epoch,loss,val_loss
        # 0,0.6931,0.6012
    """

    runs_user_code = False  # changes neither the weights, the rates nor stop_training

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self.keys: list[str] | None = None
        self._file = None
        self._writer = None

    def on_train_begin(self, logs=None):
        folder = os.path.dirname(self.filename)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.keys = None
        append = self.append
        if self.params.get("resumed_epoch") is not None and not append:
            append = self._keep_rows_before(self.params["resumed_epoch"])
        if append and os.path.exists(self.filename) and os.path.getsize(self.filename):
            # Keep the existing file's columns so appended rows line up under its header.
            with open(self.filename, newline="", encoding="utf-8") as f:
                self.keys = next(csv.reader(f, delimiter=self.sep))[1:]
        self._file = open(self.filename, "a" if append else "w", newline="",
                          encoding="utf-8")
        self._writer = None if self.keys is None else self._make_writer()

    def _keep_rows_before(self, epoch: int) -> bool:
        """A fit resumed from a checkpoint at `epoch`: keep the file's rows of the epochs
        before it (drop later ones, from the run that crashed) and append after them,
        instead of overwriting the log of the epochs the checkpoint holds."""
        if not (os.path.exists(self.filename) and os.path.getsize(self.filename)):
            return False
        with open(self.filename, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=self.sep))
        kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < epoch]
        tmp = self.filename + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter=self.sep).writerows([rows[0], *kept])
        os.replace(tmp, self.filename)  # a crash here leaves the old file or the new one
        return True

    def _make_writer(self) -> csv.DictWriter:
        return csv.DictWriter(self._file, fieldnames=["epoch", *self.keys],
                              delimiter=self.sep, extrasaction="ignore")

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self._file is None:  # driven without on_train_begin
            self.on_train_begin()
        if self._writer is None:  # first epoch of a new file: its keys are the columns
            self.keys = _columns(logs)
            self._writer = self._make_writer()
            self._writer.writeheader()
        extra = sorted(set(logs) - set(self.keys))
        if extra:
            warnings.warn(f"CSVLogger: {extra} were not in the first epoch's logs, so they "
                          f"have no column in {self.filename} and are not written.",
                          RuntimeWarning, stacklevel=2)
        self._writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self.keys}})
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file, self._writer = None, None


def _columns(logs: dict) -> list[str]:
    """Keras's columns: the sorted keys, plus `val_<key>` for each when none is `val_*`."""
    keys = sorted(logs)
    if keys and not any(k.startswith("val_") for k in keys):
        keys += [f"val_{k}" for k in keys]
    return keys
