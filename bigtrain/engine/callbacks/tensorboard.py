"""Writes logs as TensorBoard scalars, and weight histograms (Keras `TensorBoard`)."""
from __future__ import annotations

import numbers
import os

from bigtrain.engine.callbacks.base import Callback

# Keras arguments bigtrain does not implement, with their "off" values.
_NOT_OFFERED = {"write_images": False, "write_steps_per_second": False, "profile_batch": 0,
                "embeddings_freq": 0, "embeddings_metadata": None}


class TensorBoard(Callback):
    """Logs every epoch value as a TensorBoard scalar, on rank 0.

    Laid out like Keras so training and validation curves overlay in one chart: training
    values go to `<log_dir>/train` and `val_*` values to `<log_dir>/validation`, both under
    the tag `epoch_<name>` (`val_loss` -> `epoch_loss` in validation). The step is the
    0-based epoch index.

    Args:
        log_dir: folder for the event files; view with `tensorboard --logdir <log_dir>`.
        histogram_freq: every this many epochs (0: never), a histogram of each weight
            (tag `<weight name>/histogram`, step the epoch) in `train`.
        write_graph: accepted for Keras's signature; like Keras under torch, no graph.
        update_freq: "epoch", "batch" or an int N: also write `batch_<name>` scalars of the
            batch logs (running means of the epoch so far) every N batches, the step being
            the 1-based batch count of the fit. Costs a device sync per step.
        write_images, write_steps_per_second, profile_batch, embeddings_freq,
        embeddings_metadata: not offered; only their default (off) is accepted.

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[TensorBoard("runs/tb")])  # doctest: +SKIP
    """

    runs_user_code = False  # changes neither the weights, the rates nor stop_training

    def __init__(self, log_dir: str | os.PathLike = "logs", histogram_freq: int = 0,
                 write_graph: bool = True, update_freq: str | int = "epoch", **keras_args):
        super().__init__()
        _refuse(keras_args)
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (isinstance(update_freq, bool)
                                       or not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(f"TensorBoard update_freq must be 'epoch', 'batch' or a positive "
                             f"number of batches, got {update_freq!r}.")
        if histogram_freq < 0:
            raise ValueError(f"TensorBoard histogram_freq must be >= 0, got {histogram_freq}.")
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq, self.write_graph = histogram_freq, write_graph
        self.update_freq = update_freq
        self.wants_batch_logs = update_freq != "epoch"
        self.needs_weights = histogram_freq > 0  # the loop gathers them on several ranks
        self._writers: dict = {}
        self._batches = 0

    def _writer(self, split: str):
        if split not in self._writers:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard lazily
            self._writers[split] = SummaryWriter(os.path.join(self.log_dir, split))
        return self._writers[split]

    def on_train_begin(self, logs=None):
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch":
            return
        self._batches += 1
        if self._batches % self.update_freq:
            return
        for name, value in (logs or {}).items():
            if isinstance(value, numbers.Real):
                self._writer("train").add_scalar(f"batch_{name}", float(value),
                                                 global_step=self._batches)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if not isinstance(value, numbers.Real):
                continue  # strings or None cannot be plotted
            split, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            self._writer(split).add_scalar(f"epoch_{tag}", float(value), global_step=epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            for name, weight in self._weights().items():
                self._writer("train").add_histogram(f"{name.replace('.', '/')}/histogram",
                                                    weight.detach().float().cpu(),
                                                    global_step=epoch)
        for writer in self._writers.values():
            writer.flush()

    def _weights(self) -> dict:
        """The model's full weights by name (gathered by the loop on several ranks)."""
        live = getattr(self.model, "live", None)
        if live is not None and live.distributed:
            return live.full_state()
        return dict(self.model.net.state_dict())

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _refuse(keras_args: dict) -> None:
    unknown = sorted(set(keras_args) - set(_NOT_OFFERED))
    if unknown:
        raise TypeError(f"TensorBoard got unexpected arguments {unknown}.")
    on = {k: v for k, v in keras_args.items() if v != _NOT_OFFERED[k]}
    if on:
        raise ValueError(f"TensorBoard: {sorted(on)} are not offered by bigtrain (it writes "
                         "scalars and weight histograms only); leave them at their defaults "
                         f"{ {k: _NOT_OFFERED[k] for k in on} }.")
