"""Keras's per-batch calls: `train_on_batch`, `test_on_batch` and `predict_on_batch`.

Each call runs on exactly the batch given (whole, in order) in this process. Keras's
semantics (3.x, which the tests hold bigtrain to):

- `train_on_batch` takes one optimizer step. The optimizer is the model's: the one its last
  fit or train_on_batch used (bigtrain.engine.carry), so a GAN-style loop of calls, and a
  fit before or after them, continue one optimizer state, as Keras's optimizer lives on the
  model. A new `compile` starts a fresh one.
- The loss and metrics returned are this batch's alone: Keras resets the metrics at the
  start of every call. They are read before the update (train) or in inference mode (test).
- The return value is the loss alone when the model has no metrics and one output, else
  `[loss, *metrics, *per-output losses]` in Keras's order; `return_dict=True` gives the
  logs as a dict.

What is built once per compile (the task's losses and metrics, the step's context) is kept
on the model, so a call costs about what a hand-written torch step does (numbers in the
docstring of `train_on_batch`).

Example:
    for real in batches:
        d_loss = discriminator.train_on_batch(np.concatenate([real, fake]), labels)
        g_loss = gan.train_on_batch(noise, ones)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bigtrain.api import steps_data, training
from bigtrain.api.architecture import build_inner_layers, build_on_data
from bigtrain.api.compile_metrics import keras_order
from bigtrain.api.fit_args import class_weight_to_sample_weight
from bigtrain.api.inputs import _compact_one_hot, input_specs, prepare_data
from bigtrain.api.keyed_outputs import split_dict
from bigtrain.api.steps_data import _is_iterator
from bigtrain.api.weights import as_numpy
from bigtrain.engine.carry import load_carried
from bigtrain.engine.data import ArrayData, as_tensor_source, fit_inputs, keeps_double
from bigtrain.engine.steps import Tally, autocast_factory, safe_loss
from bigtrain.engine.step import train_step
from bigtrain.engine.task import FitConfig, TrainTask
from bigtrain.parallel.base import StepBatch, Strategy
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.microbatch import call_module


#: evaluate(steps=)/predict(steps=) read their batches here (Trainer's evaluate, predict)
first_batches = steps_data.first_batches


@dataclass
class BatchRunner:
    """What every per-batch call of one compile shares.

    Attributes:
        compiled: the `training.Compiled` it was built for (a new compile builds anew).
        task: its losses, metrics and deferred activations (no data: each call brings it).
        strategy: one process on the device fit would use.
        ctx: the step context (no timer, no loss scaling: full precision).
        loss_fn: the task's loss, safe for an empty batch.
        module: the network it was built for (a Sequential's pop or add builds anew).
        params: the module's parameters, in order.
        checked: the layout of the last batch checked in full (see `_batch`).
    """
    compiled: object
    task: TrainTask
    strategy: Strategy
    ctx: StepContext
    loss_fn: Callable
    module: object
    params: list
    checked: tuple | None = None

    @property
    def device(self) -> torch.device:
        return self.strategy.env.device


def _refuse_ranks(model, what: str) -> None:
    """These calls run in one process; several would each step their own copy."""
    from bigtrain.launch.runner import launched_world_size
    world = launched_world_size()
    if (world or 1) > 1 or any(hasattr(p, "to_local") for p in model.net.parameters()):
        raise RuntimeError(f"model.{what}() runs in one process, on the batch given; this is "
                           f"one of {world or 'several'} ranks of a job (or the weights are "
                           "sharded over them), where each rank would train its own copy. "
                           "Train with model.fit(..., strategy=...) across ranks, or call "
                           f"{what} in a script run as one process")


def runner_for(model, what: str) -> BatchRunner:
    """The model's BatchRunner for its current compile (built on the first call)."""
    from bigtrain.launch import join as dist_env
    runner = model._batch_runner
    if runner is not None and runner.compiled is model.compiled and runner.module is model.net:
        return runner
    _refuse_ranks(model, what)
    strategy = Strategy()
    strategy.setup(dist_env.local_env())
    strategy.setup_module(model.net)
    with training.output_activations(model, deferred=True):  # make_task defers them
        task = training.make_task(model, None, None, FitConfig(), [])
    runner = BatchRunner(model.compiled, task, strategy, StepContext(),
                         safe_loss(task.compute_loss), model.net, list(model.net.parameters()))
    model._batch_runner = runner
    return runner


def _optimizer(model, runner: BatchRunner):
    """The model's optimizer when it trains exactly the parameters that train now, else a
    new one that continues its state where it can (load_carried warns where not)."""
    if not any(p.requires_grad for p in runner.params):
        return None  # nothing to update (a frozen model): Keras only warns
    carry = model.carry()
    current = carry.optimizer if carry is not None else None
    if current is not None and _trains_exactly(current, runner.params):
        return current
    optimizer = runner.task.make_optimizer(model.net.parameters())
    load_carried(carry, runner.strategy, optimizer)
    model.optimizer = optimizer
    model.keep_optimizer(optimizer)
    return optimizer


def _trains_exactly(optimizer, params: list) -> bool:
    """The optimizer updates the parameters that require a gradient, and only those (a
    layer frozen or unfrozen since it was built asks for another)."""
    held = [p for group in optimizer.param_groups for p in group["params"]]
    want = [p for p in params if p.requires_grad]
    return len(held) == len(want) and all(a is b for a, b in zip(held, want))


def _signature(x, y, sample_weight) -> tuple | None:
    """(type, shape, dtype) of each of x, y, sample_weight when each is one numpy array or
    tensor (or None); None for anything else (lists, dicts, memmaps: always checked)."""
    parts = []
    for a in (x, y, sample_weight):
        if a is None:
            parts.append(None)
        elif type(a) in (np.ndarray, torch.Tensor):
            parts.append((type(a), tuple(a.shape), a.dtype))
        else:
            return None
    return tuple(parts)


def _batch(model, runner: BatchRunner, x, y, sample_weight) -> StepBatch:
    """The whole batch on the runner's device, as one micro-batch of weight 1.

    The first batch of each layout (shapes and dtypes) is checked as fit checks its data
    (shapes, dtypes, label ranges, NaN/Inf); a GAN-style loop's later batches of the same
    layout are only converted, as a torch loop would: their loss shows a NaN in them."""
    _refuse_streams(x)
    if y is None:
        raise ValueError("train_on_batch/test_on_batch need targets: pass y")
    signature = _signature(x, y, sample_weight)
    if signature is None or signature != runner.checked:
        data = _checked(model, x, y, sample_weight)
        runner.checked = signature
        return StepBatch(micro=[data.take(torch.arange(len(data)), runner.device)],
                         weights=[1.0])
    device, specs = runner.device, input_specs(model)
    double = keeps_double(specs)  # a float64 model's data stays float64, as in data.take
    xb = fit_inputs(as_tensor_source(x, double).to(device), specs)
    yb = as_tensor_source(y, double)
    spec, names = model.compiled.losses[0], model.compiled.all_metrics(0)
    yb = _compact_one_hot(yb, spec, names).to(device)
    sw = None if sample_weight is None else as_tensor_source(sample_weight, double).to(device)
    return StepBatch(micro=[(xb, yb, sw)], weights=[1.0])


def _refuse_streams(x) -> None:
    """A generator, Dataset or file source is many batches, not one."""
    from torch.utils.data import DataLoader, Dataset
    from bigtrain.data.streams import as_stream
    if _is_iterator(x) or isinstance(x, (Dataset, DataLoader)) or as_stream(x) is not None:
        raise ValueError(f"the *_on_batch calls take one batch of arrays or tensors (a list or "
                         f"dict of them for several inputs), got {type(x).__name__}; iterate "
                         "over a Dataset or generator (or call fit/evaluate/predict) and pass "
                         "each batch")


def _checked(model, x, y=None, sample_weight=None, need_targets=True) -> ArrayData:
    _refuse_streams(x)
    return prepare_data(model, x, y, sample_weight, need_targets=need_targets)


class _BatchTally(Tally):
    """The engine's tally for one batch: its metrics read the batch at once (the CPU ring
    that stacks many steps' outputs would only add two copies here)."""

    def __init__(self, runner: BatchRunner):
        super().__init__(runner.task.metrics, runner.task.activations, runner.device)
        self._hold = [False] * len(self._hold)


def _fresh_tally(runner: BatchRunner) -> _BatchTally | None:
    """Fresh metric states for this call (Keras resets them at the start of every call),
    made before the forward: an output's loss metric counts what the step's loss adds.
    None when the model has no metrics: the loss alone needs no states."""
    return _BatchTally(runner) if any(runner.task.metrics) else None


def _logs(tally: _BatchTally | None, batch: StepBatch, outputs: list, loss) -> dict[str, float]:
    """This batch's loss and metrics."""
    if tally is None:
        return {"loss": float(loss)}
    tally.add(batch, outputs, loss)
    return tally.logs(tally.state())


def _result(model, logs: dict[str, float], return_dict: bool):
    model.metric_logs = dict(logs)  # what model.metrics reads, as Keras's metrics hold it
    if return_dict:
        return logs
    c = model.compiled
    values = [logs[k] for k in keras_order(c, c.reported(model.output_names), logs)]
    return values[0] if len(values) == 1 else values


def train_on_batch(model, x, y=None, sample_weight=None, class_weight=None,
                   return_dict=False):
    """One optimizer step on exactly this batch; its loss (and metrics) before the step.

    Cost per call on a CPU thread (Dense(32)-Dense(1), batch 64, Adam, best of 15 x 300
    calls): a hand-written torch step 581 us, train_on_batch 608 us; with a metric
    (metrics=["mae"]) 954 us, the engine's metric tally being built for each call."""
    build_on_data(model, x)
    training._require_compiled(model, "train_on_batch")
    if class_weight is not None:
        if sample_weight is not None:
            raise ValueError("train_on_batch got both class_weight and sample_weight; pass "
                             "one (fold the class weights into sample_weight to use both)")
        ys = y if isinstance(y, (list, tuple)) else [y]
        sample_weight = class_weight_to_sample_weight(ys, class_weight, None)
    runner = runner_for(model, "train_on_batch")
    batch = _batch(model, runner, x, y, sample_weight)
    build_inner_layers(model, lambda: batch.micro[0][0])  # before the optimizer is made
    optimizer = _optimizer(model, runner)
    module = model.net
    module.train()  # every layer (a fresh one infers, as Keras's layer(x))
    tally = _fresh_tally(runner)
    with training.output_activations(model, deferred=True):
        if optimizer is None:
            outputs, loss = _forward_only(model, runner, batch)
        else:
            outputs, loss = train_step(runner.strategy, runner.ctx, module, optimizer, batch,
                                       runner.loss_fn, autocast_factory("32", runner.device))
        logs = _logs(tally, batch, outputs, loss)
    return _result(model, logs, return_dict)


def _forward_only(model, runner: BatchRunner, batch: StepBatch):
    """A training-mode forward and its loss, for a model with nothing to train."""
    warnings.warn("The model does not have any trainable weights.", UserWarning, stacklevel=4)
    x, y, sw = batch.micro[0]
    with torch.no_grad():
        out = call_module(model.net, x)
        return [out], runner.loss_fn(out, y, sw)


def test_on_batch(model, x, y=None, sample_weight=None, return_dict=False):
    """Loss (and metrics) of this batch in inference mode; no weight changes."""
    build_on_data(model, x)
    training._require_compiled(model, "test_on_batch")
    runner = runner_for(model, "test_on_batch")
    batch = _batch(model, runner, x, y, sample_weight)
    module = model.net
    was_training = module.training
    module.eval()
    xb, yb, sw = batch.micro[0]
    tally = _fresh_tally(runner)
    try:
        with torch.no_grad(), training.output_activations(model, deferred=True):
            out = call_module(module, xb)
            loss = runner.task.compute_loss(out, yb, sw)
            logs = _logs(tally, batch, [out], loss)
    finally:
        module.train(was_training)
    return _result(model, logs, return_dict)


test_on_batch.__test__ = False  # a model method, not a test for pytest to collect


def predict_on_batch(model, x):
    """The model's outputs for this batch as numpy (a list for several outputs)."""
    build_on_data(model, x)
    data = _checked(model, x, need_targets=False)
    first = next(model.net.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    xb, _, _ = data.take(torch.arange(len(data)), device)
    module = model.net
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), training.output_activations(model, deferred=False):
            out = call_module(module, xb)
    finally:
        module.train(was_training)
    flat, keys = split_dict(out)  # keys: the module returned a dict, as predict gives back
    keys = keys or getattr(module, "output_keys", None)  # Model(x, {key: tensor})
    outs = [as_numpy(o.cpu()) for o in flat]  # own dtype (ints stay ints); bf16 as float32
    if keys is not None:
        return dict(zip(keys, outs))
    return outs[0] if len(outs) == 1 else outs


def metrics_names(model) -> list[str]:
    """Keras 3's `metrics_names`: [] before compile, then "loss", "compile_metrics" when
    compile was given metrics or weighted_metrics, and each output's "<name>_loss" in a
    model of several."""
    pending = getattr(model, "pending_compile", None)  # compiled before its build
    if model.compiled is None and pending is not None:
        given = pending.keywords["metrics"] or pending.keywords["weighted_metrics"]
        return ["loss", "compile_metrics"] if given else ["loss"]
    if model.compiled is None:
        return []
    names = ["loss"]
    if any(model.compiled.metric_names) or any(model.compiled.weighted_names):
        names.append("compile_metrics")
    if len(model.output_names) > 1:
        names += [f"{name}_loss" for name in model.compiled.reported(model.output_names)]
    return names
