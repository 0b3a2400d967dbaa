"""The callback contract the training loop calls, as in Keras.

The loop sets `callback.model` (the bigtrain Model: `.optimizer` is the torch optimizer,
`.stop_training` may be set to True, `.save(path)` / `.save_weights(path)` write
safetensors) and `callback.params` (dict: epochs, steps, samples, batch_size, verbose,
metrics: list of log keys) before `on_train_begin`.

Hooks receive `logs`, a dict of Python floats that are already reduced across ranks
(`loss`, metric names, `val_*` at epoch end, `lr`). Only rank 0 calls the hooks of
callbacks whose `main_process_only` is True (everything that prints or writes files, and
every user's callback, as Keras runs them once). What such a hook changes reaches every
rank: the learning rates, `stop_training` and weights set with `self.model.set_weights`
(see rank0_weights); `self.model.get_weights()` works in every training hook under every
strategy (where the strategy splits the weights, every rank joins a gather when a hook
reads them, and only then).
Per-batch logs are Keras's: the running means of the loss and metrics over the epoch so far,
on this rank's batches (not reduced across ranks). They are built only when a callback with
a batch-end hook reads them (`wants_batch_logs`), so the loop does not synchronise with the
device on every step otherwise; the others get an empty dict.
"""
from __future__ import annotations

from bigtrain.engine.callbacks.every_rank_weights import every_rank_weights
from bigtrain.engine.callbacks.rank0_weights import rank0_weights


class Callback:
    """Base class: every hook is a no-op. Override what you need."""

    #: Called on rank 0 only (printing, files). Set False for callbacks that must run on
    #: every rank (e.g. learning-rate changes, which must stay identical on all ranks).
    main_process_only = True
    #: Per-batch logs (Keras's running means of the loss and metrics over the epoch so
    #: far) cost a device sync each step. None: wanted when the callback overrides a
    #: batch-end hook; False for callbacks that ignore them (a progress bar).
    wants_batch_logs: bool | None = None
    #: Its hooks may run the user's code, which may read or set the weights, change the
    #: learning rate or set `model.stop_training`; on several ranks the loop then keeps every
    #: rank in step with what rank 0's hooks did. bigtrain's own rank-0-only callbacks that
    #: do none of this (progress, logs, checkpoints) set False and spare those collectives.
    runs_user_code = True

    def __init__(self):
        self.model = None
        self.params: dict = {}

    @property
    def needs_weights(self) -> bool:
        """Reads the model's weights on rank 0 alone at every epoch end (checkpoints, weight
        restore). Under a distributed strategy the loop then gathers the full weights on
        every rank before the epoch-end hooks, so a rank-0-only callback never starts a
        collective alone. Default False: a user's callback that reads the weights in a hook
        gets them gathered when it asks (see rank0_weights), and one that does not costs no
        gather."""
        return bool(getattr(self, "_needs_weights", False))

    @needs_weights.setter
    def needs_weights(self, value: bool) -> None:
        self._needs_weights = bool(value)

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch: int, logs=None): ...
    def on_epoch_end(self, epoch: int, logs=None): ...
    def on_batch_begin(self, batch: int, logs=None): ...
    def on_batch_end(self, batch: int, logs=None): ...
    # validation inside fit and evaluate(callbacks=...) call the test hooks; predict the
    # predict hooks (on_predict_batch_end's logs: {"outputs": this batch's outputs})
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_test_batch_begin(self, batch: int, logs=None): ...
    def on_test_batch_end(self, batch: int, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...
    def on_predict_batch_begin(self, batch: int, logs=None): ...
    def on_predict_batch_end(self, batch: int, logs=None): ...

    def on_train_batch_begin(self, batch: int, logs=None):
        self.on_batch_begin(batch, logs=logs)  # Keras's older name, still honoured

    def on_train_batch_end(self, batch: int, logs=None):
        self.on_batch_end(batch, logs=logs)


_alone = [False]  # a main-process-only hook of a several-rank fit is running (see alone)


def alone() -> bool:
    """Whether this is rank 0 running a main-process-only hook while the other ranks of its
    fit do not: code that needs every rank (a forward through split weights) cannot run."""
    return _alone[0]


#: The hooks after which every rank waits in the loop's share (Rank0Changes) when a
#: rank-0-only callback that runs user code implements them: there they can join its reads.
_SERVED = frozenset({"on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
                     "on_train_batch_begin", "on_train_batch_end"})


def _on_rank_0_alone(hook, model, name: str, readable: bool, gather=None):
    """`hook` marked alone, its model's weights read and set through Rank0Weights.
    `readable`: the loop gathered the full state for this hook; `gather`: reads the full
    state with the other ranks (None where they do not wait for this hook)."""
    def call(*args, **kwargs):
        _alone[0] = True
        try:
            with rank0_weights(model, readable, name, gather):
                return hook(*args, **kwargs)
        finally:
            _alone[0] = False
    return call


def _on_every_rank(hook, model):
    """`hook`, its model's weights read whole on every rank (AllRanksWeights)."""
    def call(*args, **kwargs):
        with every_rank_weights(model):
            return hook(*args, **kwargs)
    return call


class CallbackList:
    """Calls every callback's hook in order; skips main-process-only ones on other ranks.
    `world`: the fit's ranks (with several, rank 0's own hooks run marked `alone`).
    `gather`: `Rank0Changes.gather` when every rank waits after the training hooks of
    rank-0-only user callbacks (their reads of split weights go through it), else None."""

    def __init__(self, callbacks, model, params: dict, is_main: bool, world: int = 1,
                 gather=None):
        self.callbacks = [c for c in callbacks if is_main or not c.main_process_only]
        self._gather = gather
        for c in self.callbacks:
            c.set_model(model)
            c.set_params(params)
        self._marked = world > 1
        self._model = model
        self._last_logs = None  # the last epoch's logs, which on_train_end receives
        self._gathered = any(c.needs_weights for c in self.callbacks)
        # The per-batch hooks that do something, looked up once: the loop calls these every
        # step and skips the dispatch (and building the batch logs) when there are none.
        # Keras's aliases count: the base on_train_batch_* calls on_batch_*.
        begin = [c for c in self.callbacks
                 if _overrides(c, "on_train_batch_begin", "on_batch_begin")]
        end = [c for c in self.callbacks if _overrides(c, "on_train_batch_end", "on_batch_end")]
        self._batch_begin = [self._hook(c, "on_train_batch_begin") for c in begin]
        self._batch_end = [self._hook(c, "on_train_batch_end") for c in end]
        self._end_logs = any(c.wants_batch_logs is not False for c in end)

    def _hook(self, callback, name: str):
        hook = getattr(callback, name)
        if not self._marked:
            return hook
        if not callback.main_process_only:  # every rank runs it: reads give every rank all
            return _on_every_rank(hook, self._model) if callback.runs_user_code else hook
        # the loop gathers the full state before epoch-end hooks when one needs it
        # (decided from the whole list, which rank 0 holds)
        readable = name == "on_epoch_end" and self._gathered
        served = callback.runs_user_code and name in _SERVED
        return _on_rank_0_alone(hook, self._model, name, readable,
                                self._gather if served else None)

    @property
    def wants_batch_logs(self) -> bool:
        """Some callback with a batch-end hook reads the batch logs."""
        return self._end_logs

    @property
    def test_batch_hooks(self) -> "CallbackList | None":
        """This list when some callback implements a test-batch hook, else None (evaluate
        then builds no per-batch logs)."""
        wanted = any(_overrides(c, "on_test_batch_begin", "on_test_batch_end")
                     for c in self.callbacks)
        return self if wanted else None

    @property
    def has_batch_begin(self) -> bool:
        """Some callback implements `on_train_batch_begin`."""
        return bool(self._batch_begin)

    @property
    def has_batch_end(self) -> bool:
        """Some callback implements `on_train_batch_end`."""
        return bool(self._batch_end)

    def on_train_batch_begin(self, batch: int, logs=None):
        logs = {} if logs is None else logs  # Keras's hooks never get None
        for hook in self._batch_begin:
            hook(batch, logs)

    def on_train_batch_end(self, batch: int, logs=None):
        logs = {} if logs is None else logs
        for hook in self._batch_end:
            hook(batch, logs)

    def on_epoch_end(self, epoch: int, logs=None):
        # on_train_end gets them as Keras's fit passes them: without what hooks add
        self._last_logs = None if logs is None else dict(logs)
        self._call("on_epoch_end", epoch, logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", self._last_logs if logs is None else logs)

    def _call(self, hook: str, *args) -> None:
        """Every callback's `hook`, its logs a dict ({} for none) passed by position, as
        Keras's CallbackList passes them (a LambdaCallback's `lambda logs: ...` needs it);
        `args`: (logs,) or (epoch, logs)."""
        *index, logs = args
        logs = {} if logs is None else logs
        for c in self.callbacks:
            self._hook(c, hook)(*index, logs)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)
        indexed = int("epoch" in hook or "batch" in hook)  # on_epoch_begin(epoch, logs)

        def call(*args, logs=None):
            if len(args) > indexed:
                args, logs = args[:indexed], args[indexed]
            self._call(hook, *args, logs)
        return call


def _overrides(callback, *hooks: str) -> bool:
    """False only when every `callback.<hook>` is the base class's own (a no-op, or the
    alias call)."""
    return any(getattr(getattr(callback, hook), "__func__", None) is not getattr(Callback, hook)
               for hook in hooks)
