"""Keras's training methods of a `bigtrain.models.Model`, as Keras's Model takes them from
its `Trainer`: compile, fit, evaluate, predict, the per-batch calls, and `optimizer`, the
optimizer a fit steps and the next one continues from.

The work is done in `bigtrain.api.training` (compile/fit/evaluate/predict: a TrainTask on
the chosen strategy) and `bigtrain.api.batch_calls` (*_on_batch); a model keeps what Keras
keeps on it: `compiled` (what compile chose), the running fit's optimizer and, between
fits, what the next fit continues from (a `bigtrain.engine.carry.Carry`). Model's
constructor sets those attributes (`compiled`, `live`, `_optimizer`, `_carry`,
`_compiled_with`, `_compiled_rate`, `metric_logs`).

Example:
    model.compile(optimizer="adam", loss="mse", weighted_metrics=["mae"])
    model.fit(x, y, sample_weight=w, epochs=3)
    int(model.optimizer.iterations)   # the optimizer steps taken
"""
from __future__ import annotations

from bigtrain.api import training
from bigtrain.api.optimizer_wrappers import keras_facing
from bigtrain.api.optimizers import OptimizerSpec
from bigtrain.engine.carry import Carry


def _rate(optimizer) -> float | None:
    """The learning rate a bigtrain.optimizers object holds now (None for a schedule or any
    other optimizer: what a fit left on a torch optimizer is already in its state)."""
    if not isinstance(optimizer, OptimizerSpec) or optimizer.schedule is not None:
        return None
    rate = optimizer.kwargs.get("lr")
    return None if rate is None else float(rate)


class Trainer:
    """Mixed into `Model` before torch's `nn.Module` (whose own `compile` is torch.compile's)."""

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                learning_rate: float | None = None, *, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                auto_scale_loss=True):
        """Choose the optimizer, loss(es) and metrics, as `keras.Model.compile`.

        Keras's execution switches are accepted so Keras code runs unchanged and change
        nothing: bigtrain runs each step eagerly, one step per batch (run_eagerly,
        steps_per_execution, jit_compile), and its mixed precision is fit's `precision=`
        (auto_scale_loss).
        `weighted_metrics` (in the forms `metrics` takes) count each sample with its weight
        from fit's and evaluate's `sample_weight` (fit's `class_weight` too); the History
        names them as Keras does ("weighted_<metric>" where a metric took the name).
        """
        same = self._compiled_again_with(optimizer, learning_rate)
        training.compile_model(self, optimizer, loss, metrics, loss_weights, learning_rate,
                               weighted_metrics)
        carried, rate = self._carry and self._carry.optimizer, _rate(optimizer)
        if not same:  # a new optimizer starts fresh, as in Keras
            self._carry = None
        elif carried is not None and rate not in (None, self._compiled_rate):
            # the rate set on the object since its last compile holds, as on Keras's
            from bigtrain.engine.callbacks._util import set_lrs
            set_lrs(carried, [rate] * len(carried.param_groups))
        # a name builds a new optimizer at every compile, as Keras's optimizers.get does
        self._compiled_with = None if isinstance(optimizer, str) else optimizer
        self._compiled_rate = rate
        return self

    def _compiled_again_with(self, optimizer, learning_rate) -> bool:
        """Whether `optimizer` is the optimizer object this model already trains with: the
        one the last compile was given, or `model.optimizer` after a fit. Keras's optimizer
        keeps its state (moments, `iterations`) in itself, so compiling again with the same
        object continues it (recompiling after a change of loss or metrics, or with
        `optimizer=model.optimizer`); a new object or a name starts afresh."""
        carry = self._carry
        if carry is None or isinstance(optimizer, str) or learning_rate is not None:
            return False
        return optimizer is self._compiled_with or (
            carry.optimizer is not None and optimizer is carry.optimizer)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, **kwargs):
        """Train; see `bigtrain.api.training.fit` for every argument. Returns a History."""
        return training.fit(self, x, y, batch_size=batch_size, epochs=epochs, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, verbose=0, sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """The loss, or [loss, *metrics], as Keras returns them. `steps`: the first so many
        batches only (arrays or a generator of (x, y[, sample_weight]) batches).
        `callbacks` get Keras's test hooks (on_test_begin, on_test_batch_*, on_test_end)."""
        from bigtrain.api import batch_calls
        x, y, sample_weight, batch_size = batch_calls.first_batches(
            x, y, sample_weight, batch_size or training.DEFAULT_BATCH_SIZE, steps)
        return training.evaluate(self, x, y, batch_size, sample_weight, return_dict,
                                 callbacks)

    def predict(self, x, batch_size=None, verbose=0, steps=None, callbacks=None):
        """Model outputs as numpy (probabilities when the activation moved into the loss).
        `steps`: the first so many batches only (arrays or a generator); `callbacks` get
        Keras's predict hooks (on_predict_begin, on_predict_batch_*, on_predict_end)."""
        from bigtrain.api import batch_calls
        x, _, _, batch_size = batch_calls.first_batches(
            x, None, None, batch_size or training.DEFAULT_BATCH_SIZE, steps, targets=False)
        return training.predict(self, x, batch_size, callbacks)

    # ---- one batch at a time (bigtrain.api.batch_calls) --------------------------------------
    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One optimizer step on exactly this batch, continuing the model's optimizer (as
        fit does); returns this batch's loss, or [loss, *metrics], as Keras."""
        from bigtrain.api import batch_calls
        return batch_calls.train_on_batch(self, x, y, sample_weight, class_weight, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """This batch's loss, or [loss, *metrics], in inference mode, as Keras."""
        from bigtrain.api import batch_calls
        return batch_calls.test_on_batch(self, x, y, sample_weight, return_dict)

    def predict_on_batch(self, x):
        """The outputs for this batch as numpy (a list for several outputs)."""
        from bigtrain.api import batch_calls
        return batch_calls.predict_on_batch(self, x)

    def reset_metrics(self) -> None:
        """As Keras's: the values `metrics` and `get_metrics_result()` read become 0 (each
        fit epoch, evaluate and *_on_batch call starts its metrics fresh anyway)."""
        for metric in self.metrics:
            metric.reset_state()

    @property
    def metrics(self) -> list:
        """Keras's `model.metrics`: one per `metrics_names` entry, whose `result()` is its
        value in the latest fit, evaluate or *_on_batch call (bigtrain.api.metric_views)."""
        from bigtrain.api.metric_views import logged_metrics
        return logged_metrics(self)

    def get_metrics_result(self) -> dict:
        """The latest call's loss and metrics as one dict, as Keras's."""
        from bigtrain.api.metric_views import metrics_result
        return metrics_result(self)

    @property
    def metrics_names(self) -> list[str]:
        """Keras 3's list: "loss", "compile_metrics" when compile was given metrics, and
        each output's "<name>_loss" in a model of several outputs ([] before compile)."""
        from bigtrain.api import batch_calls
        return batch_calls.metrics_names(self)


    @property
    def optimizer(self):
        """Keras's `model.optimizer`: while fit runs, the optimizer that steps; between fits,
        the one the next fit continues from; before the first fit (or when the next one
        starts afresh) the compiled OptimizerSpec it will build from; None before compile.
        Each has Keras's settable `learning_rate` and `iterations` (the optimizer steps
        taken under this compile, across fits); the torch ones also torch's API
        (`param_groups`, `state_dict()`)."""
        if self.live is not None:
            return self._optimizer
        carried = self._carry.optimizer if self._carry is not None else None
        if carried is not None:
            return carried
        return self.compiled.optimizer if self.compiled is not None else None

    @optimizer.setter
    def optimizer(self, optimizer) -> None:
        self._optimizer = keras_facing(optimizer)

    def keep_optimizer(self, optimizer) -> None:
        """After a fit: its optimizer (None after a multi-process fit), which the next fit
        under the same compile continues from, as Keras's optimizer lives on the model."""
        self._carry = Carry(optimizer)

    def carry(self) -> Carry | None:
        """What the next fit continues from (bigtrain.engine.carry): None before the first
        fit and after a new compile."""
        return self._carry
