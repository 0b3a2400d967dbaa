"""Writes epoch logs as TensorBoard scalars (Keras `TensorBoard`, epoch-level)."""
from __future__ import annotations

import numbers
import os

from bigtrain.engine.callbacks.base import Callback


class TensorBoard(Callback):
    """Logs every epoch value as a TensorBoard scalar, on rank 0.

    Laid out like Keras so training and validation curves overlay in one chart: training
    values go to `<log_dir>/train` and `val_*` values to `<log_dir>/validation`, both under
    the tag `epoch_<name>` (`val_loss` -> `epoch_loss` in validation). The step is the
    0-based epoch index.

    Args:
        log_dir: folder for the event files; view with `tensorboard --logdir <log_dir>`.

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[TensorBoard("runs/tb")])  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike = "logs"):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writers: dict = {}

    def _writer(self, split: str):
        if split not in self._writers:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard lazily
            self._writers[split] = SummaryWriter(os.path.join(self.log_dir, split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if not isinstance(value, numbers.Real):
                continue  # strings or None cannot be plotted
            split, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            self._writer(split).add_scalar(f"epoch_{tag}", float(value), global_step=epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
