"""Keras's smaller callbacks: `TerminateOnNaN`, `LambdaCallback`, and those bigtrain does
not offer (`BackupAndRestore`, `RemoteMonitor`, `SwapEMAWeights`), which say what to use."""
from __future__ import annotations

import math

from bigtrain.engine.callbacks.base import Callback


class TerminateOnNaN(Callback):
    """Stops training when a batch's logged loss is NaN or Inf (Keras `TerminateOnNaN`).

    fit(terminate_on_nan=True), the default, already does this on every rank, naming the
    step; this callback is the Keras spelling, reading the batch logs (running mean loss).
    The epoch still ends: its NaN logs reach the History, as in Keras.

    Args:
        raise_error: raise RuntimeError at once instead of setting `model.stop_training`.

    Example:
        >>> model.fit(x, y, callbacks=[TerminateOnNaN()])  # doctest: +SKIP
    """

    wants_batch_logs = True

    def __init__(self, raise_error: bool = False):
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: "
                               f"{loss}. Terminating training immediately.")
        print(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback built from functions (Keras `LambdaCallback`): each given hook replaces
    the no-op, e.g. `on_epoch_end=lambda epoch, logs: print(logs["loss"])`. Other hooks
    (`on_batch_end=...`) may be passed by name too.

    Example:
        >>> cb = LambdaCallback(on_train_end=lambda logs: print("done"))
        >>> cb.on_train_end()
        done
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        self.__dict__.update(kwargs)  # as Keras: any hook (or attribute) by name
        hooks = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end)
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)


class _NotOffered(Callback):
    """A Keras callback bigtrain does not offer: constructing it raises, saying why."""

    reason = ""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"bigtrain does not offer {type(self).__name__}: "
                                  f"{self.reason}")


class BackupAndRestore(_NotOffered):
    reason = ("fit keeps its own checkpoints for restarts. Pass fit(checkpoint_dir=<folder>, "
              "checkpoint_every=<steps>) and keep resume='auto' (the default): an interrupted "
              "fit run again on the same folder resumes from the newest checkpoint, "
              "mid-epoch included, also on another number of ranks.")


class RemoteMonitor(_NotOffered):
    reason = ("training makes no network requests. Log with CSVLogger or TensorBoard, or "
              "post the logs yourself from a LambdaCallback(on_epoch_end=...).")


class SwapEMAWeights(_NotOffered):
    reason = ("the weight average of use_ema=True lives in the optimizer state (sharded "
              "under zero/fsdp strategies), and fit puts it into the model when training "
              "ends, as Keras does. Evaluate after fit to score the averaged weights.")
