"""The training loop: epochs of global batches through a Strategy, callbacks at the edges.

`train(task, strategy, owner)` runs on every rank (once in a single process). It never
synchronises with the device per step except to check for a non-finite loss every
`nan_check_every` steps and when a callback asks for per-batch numbers.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

from bigtrain.diagnose.step_timer import PhaseTimer
from bigtrain.diagnose.watchdog import Heartbeat, WatchdogConfig
from bigtrain.engine.callbacks.base import CallbackList
from bigtrain.engine.checkpoint import Checkpointer
from bigtrain.engine.comm_probe import exposed_sync_seconds
from bigtrain.engine.data import epoch_window, num_batches, sample_count, shard_bounds
from bigtrain.engine.feed import EpochPlan, feed_epoch
from bigtrain.engine.record import write_run_record
from bigtrain.engine.steps import Tally, autocast_factory, safe_loss
from bigtrain.engine.task import TrainTask
from bigtrain.parallel.base import Strategy
from bigtrain.parallel.update_rules import finish_ema
from bigtrain.parallel.watchdog import start_watchdog, stop_watchdog


@dataclass
class FitResult:
    """What a finished run hands back to the caller (rank 0 holds the full weights)."""
    history: dict = field(default_factory=dict)
    epochs: list = field(default_factory=list)
    state_dict: dict | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class Progress:
    """Optimizer steps done in all, and batches of the current epoch to skip (a run that
    resumes mid-epoch skips the batches the checkpoint already trained on)."""
    step: int = 0
    skip: int = 0
    checkpointer: Checkpointer | None = None

    def after_step(self, epoch: int, batch: int, steps_per_epoch: int) -> None:
        self.step += 1
        if self.checkpointer is not None:
            self.checkpointer.after_step(epoch, batch, steps_per_epoch, self.step)


@dataclass
class RunTiming:
    """What the loop measured for the run record: the phase timer the strategy marks into,
    optimizer steps run, one training batch kept for the end-of-fit communication probe,
    and the probe's result (seconds, or None when the strategy has nothing to probe)."""
    timer: PhaseTimer
    steps: int = 0
    last_batch: object = None
    exposed_sync_s: float | None = None


class NonFiniteLoss(Exception):
    def __init__(self, message: str):
        super().__init__(message)


def evaluate(task: TrainTask, strategy: Strategy, module, data, batch_size: int,
             prefix: str = "", limit: int | None = None) -> dict[str, float]:
    """Loss and metrics over `data` (its first `limit` samples when given), sharded across
    ranks and reduced; Keras-style logs."""
    device = strategy.env.device
    tally = Tally(task.metrics, task.activations, device)
    shard = strategy.data_shard()
    lo, hi = shard_bounds(len(data) if limit is None else min(limit, len(data)), *shard)
    autocast = autocast_factory(task.config.precision, device)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for start in range(lo, hi, batch_size):
            strategy.mark("evaluate")  # per batch: restarts the watchdog's clock only
            idx = torch.arange(start, min(start + batch_size, hi))
            x, y, sw = data.take(idx, device)
            with autocast():
                out = strategy.eval_forward(module, x) if hasattr(strategy, "eval_forward") \
                    else (module(*x) if isinstance(x, tuple) else module(x))
            if out is None:
                continue  # a pipeline stage that does not own the output
            loss = task.compute_loss(out, y, sw)
            tally.loss_sum += loss.double() * len(idx)
            tally.count += len(idx)
            tally.update_metrics(y, out)
    module.train(was_training)
    strategy.mark("metrics all-reduce (evaluate)")
    return tally.logs(strategy.all_reduce(tally.state()), prefix)


def _check_finite(pending: list, first: int, epoch: int, strategy: Strategy,
                  batch_size: int) -> None:
    """Stop every rank when one of the losses `pending` (of steps `first`, `first + 1`, ...
    of this epoch) is NaN/Inf; the list is emptied. A collective: every rank calls it at
    the same steps, with or without pending losses."""
    losses = torch.stack(pending).reshape(len(pending), -1) if pending else torch.zeros(0, 1)
    pending.clear()
    bad = (~torch.isfinite(losses).all(1)).nonzero()
    flag = torch.tensor([float(first + int(bad[0])) if len(bad) else float("inf")])
    strategy.all_reduce(flag, op="min")  # every rank stops together
    if torch.isfinite(flag):
        step = int(flag)
        raise NonFiniteLoss(
            f"TerminateOnNaN: the loss became NaN/Inf at epoch {epoch + 1}, step {step + 1} "
            f"(global batch {step} of this epoch: samples {step * batch_size}.."
            f"{(step + 1) * batch_size - 1} of the shuffled order). Check the inputs for "
            "NaN/Inf (bigtrain doctor), lower the learning rate, or use gradient clipping.")


def _train_epoch(task, strategy, module, optimizer, callbacks, epoch, timing,
                 progress: Progress) -> dict[str, float]:
    cfg, device = task.config, strategy.env.device
    shard, replicas = strategy.data_shard(), strategy.grad_replicas
    feed = feed_epoch(task.train, EpochPlan(epoch, cfg.batch_size, cfg.steps_per_epoch, cfg.seed,
                                            cfg.shuffle, shard, cfg.accumulate_steps, replicas,
                                            progress.skip, device))
    steps = feed.steps
    tally = Tally(task.metrics, task.activations, device)
    pending: list = []  # losses of the steps since the last non-finite check
    loss_fn, autocast = safe_loss(task.compute_loss), autocast_factory(cfg.precision, device)
    # decided once per epoch, not per step
    begin_hooks, end_hooks = callbacks.has_batch_begin, callbacks.has_batch_end
    want_logs, check_nan = end_hooks and callbacks.wants_batch_logs, cfg.terminate_on_nan
    mark, timer = strategy.mark, timing.timer
    module.train()
    last_check = progress.skip  # steps before it were trained before the checkpoint
    for step in feed.step_numbers(progress.skip):
        mark("callbacks (batch begin)", progress.step)
        if begin_hooks:
            callbacks.on_train_batch_begin(step)
        timer.begin_step(timing.steps)
        mark("data")
        size, batch = feed.next()
        # strategies refine it: forward, backward, optimizer step, communication
        mark("train step", phase="other")
        outputs, loss = strategy.train_step(module, optimizer, batch, loss_fn, autocast)
        mark("metrics")
        timing.steps += 1
        timing.last_batch = batch
        tally.add(batch, outputs, loss)
        if check_nan:
            pending.append(loss)
            if step + 1 - last_check >= cfg.nan_check_every:
                mark("loss check all-reduce", phase="comm")
                _check_finite(pending, last_check, epoch, strategy, cfg.batch_size)
                last_check = step + 1
        mark("callbacks (batch end)")
        if end_hooks:
            logs = {"size": size}
            if want_logs:
                logs["loss"] = float(loss)
            callbacks.on_train_batch_end(step, logs)
        mark("checkpoint" if progress.checkpointer else "step end")
        progress.after_step(epoch, step, steps)
    progress.skip = 0
    if check_nan:
        mark("loss check all-reduce")
        _check_finite(pending, last_check, epoch, strategy, cfg.batch_size)
    mark("metrics all-reduce")
    return tally.logs(strategy.all_reduce(tally.state()))


def check_precision(strategy: Strategy, precision: str) -> None:
    """float16 training needs loss scaling; refuse it where the strategy cannot scale."""
    if precision == "16-mixed" and not strategy.supports_loss_scaling:
        raise ValueError(f"precision='16-mixed' needs loss scaling (a GradScaler), which "
                         f"strategy {strategy.name!r} does not do; use precision='bf16-mixed' "
                         "(no scaling needed) or precision='32'")


def run_rank(task: TrainTask, strategy: Strategy, owner, env) -> FitResult:
    """Everything one rank does for a fit: check the strategy against the world size, set
    it up on `env`, train, and always tear it down.

    Example:
        result = run_rank(task, resolve_strategy("ddp"), model, env)
    """
    strategy.validate(env.world_size, task.config.batch_size)
    check_precision(strategy, task.config.precision)
    strategy.setup(env)
    try:
        return train(task, strategy, owner)
    finally:
        strategy.teardown()


def train(task: TrainTask, strategy: Strategy, owner) -> FitResult:
    """Run `task` with `strategy` (already `setup`) on this rank, under the hang watchdog.

    In a distributed run the watchdog (`task.watchdog`, a WatchdogConfig; default on, 120 s)
    reports which rank the others wait for and ends the process when one operation lasts
    longer than its window. See `_train` for the arguments and result.
    """
    beat = Heartbeat()
    config = task.watchdog or WatchdogConfig()
    dog = start_watchdog(strategy.env, config, beat)
    strategy.heartbeat = beat
    if task.config.precision == "16-mixed":  # float16 gradients underflow without it
        strategy.grad_scaler = torch.amp.GradScaler(strategy.env.device.type)
    try:
        return _train(task, strategy, owner)
    finally:
        vars(strategy).pop("heartbeat", None)
        vars(strategy).pop("grad_scaler", None)
        stop_watchdog(dog)


def _train(task: TrainTask, strategy: Strategy, owner) -> FitResult:
    """Run `task` with `strategy` (already `setup`) on this rank.

    Args:
        task: the run's model, losses, data and settings.
        strategy: a Strategy on which `setup(env)` was called.
        owner: the user-facing model object callbacks see (`optimizer`, `stop_training`,
            weights access); the loop sets `owner.optimizer` and `owner.stop_training`.

    Returns:
        FitResult; `state_dict` is the full unsharded state on rank 0 (None elsewhere).
    """
    cfg = task.config
    if hasattr(strategy, "precision"):
        strategy.precision = cfg.precision  # sharded strategies cast through FSDP's policy
    module = strategy.setup_module(task.module)
    optimizer = strategy.setup_optimizer(module, task.make_optimizer)
    if strategy.is_service_rank():  # a parameter server: serve the workers, no loop
        strategy.serve()
        return FitResult(stats=getattr(strategy, "stats", dict)())
    owner.optimizer, owner.stop_training = optimizer, False
    owner._live = (strategy, module)
    n = sample_count(task.train)  # None: a stream of unknown length
    steps = cfg.steps_per_epoch or (None if n is None else num_batches(n, cfg.batch_size))
    params = {"epochs": cfg.epochs, "steps": steps, "samples": n,
              "batch_size": cfg.batch_size, "verbose": cfg.verbose,
              "metrics": ["loss", *task.metric_names()]}
    callbacks = CallbackList(task.callbacks, owner, params, strategy.env.is_main)
    result = FitResult()
    progress, first_epoch = _resume(task, strategy, module, optimizer, result)
    callbacks.on_train_begin()
    t_start, samples, epoch_times = time.perf_counter(), 0, []
    timing = RunTiming(PhaseTimer(strategy.env.device))
    strategy.phase_timer = timing.timer
    try:
        for epoch in range(first_epoch, cfg.epochs):
            callbacks.on_epoch_begin(epoch)
            t0 = time.perf_counter()
            try:
                logs = _train_epoch(task, strategy, module, optimizer, callbacks, epoch, timing,
                                    progress)
            except NonFiniteLoss as e:
                if strategy.env.is_main:
                    print(e, flush=True)
                owner.stop_training = True
                break
            samples += _epoch_samples(epoch, cfg, n)
            if task.val is not None and cfg.validates_after(epoch):
                val_batch = cfg.validation_batch_size or cfg.batch_size
                limit = None if cfg.validation_steps is None else cfg.validation_steps * val_batch
                logs.update(evaluate(task, strategy, module, task.val, val_batch, "val_", limit))
            epoch_times.append(time.perf_counter() - t0)
            strategy.mark("gather weights for callbacks")
            _refresh_weight_cache(task, strategy, module, owner)
            strategy.mark("callbacks (epoch end)")
            callbacks.on_epoch_end(epoch, logs)
            owner._weights_cache = None
            result.epochs.append(epoch)
            for k, v in logs.items():
                result.history.setdefault(k, []).append(v)
            if progress.checkpointer is not None:  # after the History: the checkpoint keeps it
                strategy.mark("checkpoint")
                progress.checkpointer.after_epoch(epoch, progress.step)
            if owner.stop_training:
                break
        if first_epoch < cfg.epochs:
            finish_ema(optimizer)  # use_ema: the weights become their average, as Keras
    finally:
        callbacks.on_train_end()
        vars(strategy).pop("phase_timer", None)
    elapsed = time.perf_counter() - t_start
    result.stats = {"samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
                    "wall_s": elapsed, "epoch_times": epoch_times, **getattr(strategy, "stats", lambda: {})()}
    if task.run_dir is not None:  # every rank has the same run_dir: all probe or none
        strategy.mark("communication probe")
        timing.exposed_sync_s = exposed_sync_seconds(
            strategy, module, timing.last_batch, safe_loss(task.compute_loss),
            autocast_factory(cfg.precision, strategy.env.device))
    timing.last_batch = None
    write_run_record(task, strategy, module, optimizer, result, timing)
    strategy.mark("gather full state")
    state = strategy.full_state_dict(module)
    result.state_dict = state if strategy.env.is_main else None
    owner._live = None
    return result


def _epoch_samples(epoch: int, cfg, n: int) -> int:
    """Training samples in epoch `epoch` (all `n` unless steps_per_epoch cuts the pass)."""
    if n is None:  # a stream of unknown length: its nominal steps
        return (cfg.steps_per_epoch or 0) * cfg.batch_size
    _, first, stop = epoch_window(epoch, cfg.steps_per_epoch, num_batches(n, cfg.batch_size))
    return min(n, stop * cfg.batch_size) - first * cfg.batch_size


def _resume(task, strategy, module, optimizer, result: FitResult) -> tuple[Progress, int]:
    """(progress, first epoch): from the checkpoint `task.checkpoint` selects, if any. When
    that checkpoint's run already finished the epochs asked for, `result` gets its recorded
    History and the loop has nothing to train."""
    cfg = task.config
    if task.checkpoint is None:
        return Progress(), cfg.initial_epoch
    info = {"batch_size": cfg.batch_size, "samples": sample_count(task.train), "seed": cfg.seed,
            "shuffle": cfg.shuffle, "strategy": strategy.name,
            "steps_per_epoch": cfg.steps_per_epoch}
    ckpt = Checkpointer(task.checkpoint, strategy, module, optimizer, info, record=result)
    start = ckpt.restore()
    if start is None:
        return Progress(checkpointer=ckpt), cfg.initial_epoch
    if start.epoch >= cfg.epochs:
        recorded = ckpt.history()
        result.history, result.epochs = recorded["history"], recorded["epochs"]
        ckpt.prior, ckpt.record = recorded, None  # a later save keeps it once
        if strategy.env.is_main:
            warnings.warn(finished_note(task.checkpoint.directory, start.epoch, cfg.epochs),
                          UserWarning, stacklevel=2)
    elif strategy.env.is_main and cfg.verbose:
        print(f"Resuming from checkpoint step {start.step} (epoch {start.epoch + 1}, "
              f"batch {start.batch})", flush=True)
    return Progress(start.step, start.batch, ckpt), start.epoch


def finished_note(directory: str, done: int, epochs: int) -> str:
    """What fit says when checkpoint_dir holds a run that already did all its epochs."""
    return (f"checkpoint_dir {directory!r} holds a run that already finished {done} epochs "
            f"(this fit asks for epochs={epochs}): nothing to train. fit returns that run's "
            f"recorded History and weights. To train again pass a new checkpoint_dir (or "
            f"resume='never'); to continue it pass epochs > {done}.")


def _refresh_weight_cache(task, strategy, module, owner) -> None:
    """Callbacks that read weights on rank 0 only (checkpoints) must not start a collective
    alone: gather the full state on every rank first when such a callback exists."""
    if strategy.env.distributed and any(getattr(c, "needs_weights", False) for c in task.callbacks):
        owner._weights_cache = strategy.full_state_dict(module)
