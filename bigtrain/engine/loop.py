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
from bigtrain.engine.callbacks._util import batch_logs_wanted
from bigtrain.engine.callbacks.base import CallbackList
from bigtrain.engine.carry import carried_optimizer, final_rate, final_steps, load_carried
from bigtrain.engine.carry_state import gather_full
from bigtrain.engine.comm_probe import backward_compute_seconds
from bigtrain.engine.data import epoch_window, num_batches, sample_count
from bigtrain.engine.epoch_steps import EpochSteps, run_steps
from bigtrain.engine.evaluate import evaluate
from bigtrain.engine.feed import (EpochPlan, ShortestStream, feed_epoch, input_sample,
                                  stream_ends)
from bigtrain.engine.finite_check import FiniteCheck, NonFiniteLoss
from bigtrain.engine.rank0_sync import Rank0Sync, rank0_reads_weights, rank0_sync
from bigtrain.engine.record import write_run_record
from bigtrain.engine.callbacks.run_monitor import RunMonitor
from bigtrain.engine.live import LiveWeights
from bigtrain.engine.resume import Progress, resume
from bigtrain.engine.run_profile import write_local_record
from bigtrain.engine.steps import Tally, autocast_factory, safe_loss
from bigtrain.engine.task import TrainTask
from bigtrain.parallel.base import Strategy
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.seeds import seed_rank
from bigtrain.parallel.update_rules import finish_ema
from bigtrain.parallel.watchdog import start_watchdog, stop_watchdog


@dataclass
class FitResult:
    """What a finished run hands back to the caller: rank 0 holds the full weights, unless
    the run trained the caller's own module in place (`TrainTask.weights_in_place`)."""
    history: dict = field(default_factory=dict)
    epochs: list = field(default_factory=list)
    state_dict: dict | None = None
    stats: dict = field(default_factory=dict)
    optimizer: object = None  # for the next fit, in a one-process run (bigtrain.engine.carry)
    learning_rate: float | None = None  # the rate it ended with, for the next fit (carry)
    iterations: int | None = None  # a schedule's step count it ended with (carry)
    #: several processes: the whole optimizer state on rank 0 (bigtrain.engine.carry_state)
    optimizer_state: bytes | None = None
    stop_reason: str | None = None  # "nan_loss" when TerminateOnNaN stopped the run
    #: each of the task's callbacks' plain attributes at the end, from a rank of a launched
    #: fit, for the caller's own callback objects (bigtrain.launch.launcher.callback_states)
    callback_states: list | None = None


@dataclass
class RunTiming:
    """What the loop measured for the run record: the phase timer the strategy marks into
    (None when the fit keeps no run record: nothing would read it),
    optimizer steps run, one training batch kept for the end-of-fit communication probe,
    and the probe's result: one micro-batch's backward without its gradient sync (seconds,
    or None when the strategy has nothing to probe) and the micro-batches of a step."""
    timer: PhaseTimer | None
    steps: int = 0
    last_batch: object = None
    backward_compute_s: float | None = None
    micro_per_step: int = 1


def _epoch_feed(task, strategy: Strategy, epoch: int, progress: Progress):
    cfg = task.config
    return feed_epoch(task.train, EpochPlan(
        epoch, cfg.batch_size, cfg.steps_per_epoch, cfg.seed, cfg.shuffle,
        strategy.data_shard(), cfg.accumulate_steps, strategy.grad_replicas, progress.skip,
        strategy.env.device))


def _train_epoch(task, strategy, ctx, module, optimizer, callbacks, epoch, timing,
                 progress: Progress, sync: Rank0Sync, monitor=None,
                 ends: ShortestStream | None = None) -> dict[str, float]:
    cfg, device = task.config, strategy.env.device
    feed = _epoch_feed(task, strategy, epoch, progress)
    if feed.steps is None:  # a stream of unknown length: the ranks agree where it ends
        feed.agree = ends
    tally = Tally(task.metrics, task.activations, device, keep_step_losses=monitor is not None)
    if monitor is not None:  # the record's step losses, read when it is written
        monitor.watch(tally, first_step=progress.skip)
    loss_fn, autocast = safe_loss(task.compute_loss), autocast_factory(cfg.precision, device)
    # decided once per epoch, not per step; steps before progress.skip were trained before
    # the checkpoint this run resumed from
    begin_hooks, end_hooks = callbacks.has_batch_begin, callbacks.has_batch_end
    want_logs = end_hooks and callbacks.wants_batch_logs
    # several ranks: a user's batch hooks get the global batch's logs, as in one process (an
    # all-reduce per step), decided from the fit's whole callback list so every rank joins
    global_logs = strategy.env.world_size > 1 and batch_logs_wanted(task.callbacks)
    finite = (FiniteCheck(cfg, epoch, progress.skip, strategy, tally)
              if cfg.terminate_on_nan else None)
    _carry_tally(progress, tally, strategy.env.is_main)
    module.train()
    batch = run_steps(EpochSteps(
        strategy, ctx, module, optimizer, feed, task.compute_loss, loss_fn, autocast, tally,
        finite, progress, callbacks, sync, timing, epoch, begin_hooks, end_hooks, want_logs,
        global_logs))
    progress.skip = 0
    if batch is not None:  # for the end-of-fit communication probe; kept here, not per
        timing.last_batch = batch  # step, where it held a step's inputs through the next
    if finite is not None:
        ctx.mark("loss check all-reduce")
        finite.check(next_last=0)
    ctx.mark("metrics all-reduce")
    return tally.logs(strategy.all_reduce(tally.state()))


def _carry_tally(progress: Progress, tally: Tally, is_main: bool) -> None:
    """Checkpoints keep this pass's running sums; a resumed epoch starts from the sums of
    the batches its checkpoint trained (rank 0 adds them: the epoch's all-reduce sums)."""
    ckpt = progress.checkpointer
    if ckpt is None:
        return
    ckpt.epoch_tally = tally.state
    seed, ckpt.resumed_tally = ckpt.resumed_tally, None
    if seed and progress.skip and is_main and not tally.seed(seed):
        warnings.warn("the checkpoint's running loss and metric sums do not match this "
                      "model's metrics: the resumed epoch's logs cover only its batches "
                      "from the checkpoint on", UserWarning, stacklevel=2)


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
        seed_rank(task.rank_seed, strategy)
        return train(task, strategy, owner)
    finally:
        strategy.teardown()


def train(task: TrainTask, strategy: Strategy, owner) -> FitResult:
    """Run `task` with `strategy` (already `setup`) on this rank, under the hang watchdog.

    In a distributed run the watchdog (`task.watchdog`, a WatchdogConfig; default on, 120 s)
    reports which rank the others wait for and ends the process when one operation lasts
    longer than its window. See `_train` for the arguments and result.
    """
    # one process waits for nobody: no watchdog, so no heartbeat to keep per mark
    beat = Heartbeat() if strategy.env.distributed else None
    # the step phases go to the run record only: without one, no mark is timed
    timer = PhaseTimer(strategy.env.device) if task.run_dir is not None else None
    ctx = StepContext(heartbeat=beat, timer=timer)
    if task.config.precision == "16-mixed":  # float16 gradients underflow without it
        ctx.grad_scaler = torch.amp.GradScaler(strategy.env.device.type)
    dog = start_watchdog(strategy.env, task.watchdog or WatchdogConfig(), ctx.heartbeat)
    try:
        return _train(task, strategy, ctx, owner)
    finally:
        stop_watchdog(dog)


def _train(task: TrainTask, strategy: Strategy, ctx: StepContext, owner) -> FitResult:
    """Run `task` with `strategy` (already `setup`) on this rank.

    Args:
        task: the run's model, losses, data and settings.
        strategy: a Strategy on which `setup(env)` was called.
        ctx: the StepContext every step and mark of this fit goes through.
        owner: the user-facing model object callbacks see. The loop sets its public
            `optimizer`, `stop_training` and `live` (a LiveWeights while the fit runs, then
            None), as Keras's fit sets `model.optimizer` and `model.stop_training`.

    Returns:
        FitResult; `state_dict` is the full unsharded state on rank 0 (None elsewhere, and
        None where the caller's module itself was trained: `TrainTask.weights_in_place`).
    """
    cfg = task.config
    strategy.use_precision(cfg.precision)
    if strategy.wants_input_sample:
        strategy.use_input_sample(input_sample(task.train, strategy.env.device))
    module = strategy.setup_module(task.module)
    optimizer = strategy.setup_optimizer(module, task.make_optimizer)
    if strategy.is_service_rank():  # a parameter server: serve the workers, no loop
        strategy.serve()
        return FitResult(stats=strategy.stats())
    owner.optimizer, owner.stop_training = optimizer, False
    owner.live = LiveWeights(strategy, module)
    n = sample_count(task.train)  # None: a stream of unknown length
    steps = cfg.steps_per_epoch or (None if n is None else num_batches(n, cfg.batch_size))
    params = {"epochs": cfg.epochs, "steps": steps, "samples": n,
              "batch_size": cfg.batch_size, "verbose": cfg.verbose,
              "metrics": ["loss", *task.metric_names()]}
    result = FitResult()
    load_carried(task.carry, strategy, optimizer, module)  # a resumed checkpoint overrides it
    progress, first_epoch = resume(task, strategy, module, optimizer, result)
    if progress.step:  # from a checkpoint: a log file keeps the epochs trained before it
        params["resumed_epoch"] = first_epoch
        params["resumed_history"] = progress.checkpointer.prior["history"]  # ModelCheckpoint
    monitor = _monitor(task, strategy)
    sync = rank0_sync(task, strategy, optimizer, owner)
    callbacks = CallbackList([*([monitor] if monitor else []), *task.callbacks], owner,
                             params, strategy.env.is_main, strategy.env.world_size, sync.gather)
    run = _Run(task, strategy, ctx, module, optimizer, owner, callbacks, progress, result,
               RunTiming(ctx.timer), monitor, sync,
               stream_ends(strategy, n, cfg.steps_per_epoch,
                           lockstep=sync.batch_begin or sync.batch_end))
    callbacks.on_train_begin()
    run.sync.share()
    t_start = time.perf_counter()
    finished = False  # after a failure no rank waits for rank 0's on_train_end
    try:
        samples, epoch_times = _epochs(run, first_epoch)
        if first_epoch < cfg.epochs:
            finish_ema(optimizer)  # use_ema: the weights become their average, as Keras
        finished = True
    except BaseException as e:  # the record survives: history, step losses, why it stopped
        if monitor is not None:
            monitor.failed(e, lambda m: write_local_record(task, strategy, run.timing, m,
                                                           profile=True))
        raise
    finally:
        with run.sync.train_end(finished):
            callbacks.on_train_end()
    elapsed = time.perf_counter() - t_start
    result.stats = {"samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
                    "wall_s": elapsed, "epoch_times": epoch_times, **strategy.stats()}
    _finish(run)
    result.optimizer = carried_optimizer(strategy, optimizer)
    if strategy.env.distributed:  # once per fit, every rank: the state for the next fit
        ctx.mark("gather optimizer state")
        result.optimizer_state = gather_full(strategy, module, optimizer)
    result.learning_rate = final_rate(optimizer)
    result.iterations = final_steps(optimizer)
    owner.live = None
    return result


@dataclass
class _Run:
    """What one rank's fit works with, passed between the loop's parts."""
    task: TrainTask
    strategy: Strategy
    ctx: StepContext
    module: object
    optimizer: object
    owner: object
    callbacks: CallbackList
    progress: Progress
    result: FitResult
    timing: RunTiming
    monitor: RunMonitor | None = None  # rank 0's run-record keeper (bigtrain doctor)
    sync: Rank0Sync | None = None
    ends: ShortestStream | None = None  # where several ranks' streams end (feed.py)


def _epochs(run: _Run, first_epoch: int) -> tuple[int, list[float]]:
    """Train epochs `first_epoch`.. until the last or a stop; (samples trained, seconds per
    epoch)."""
    task, strategy, cfg = run.task, run.strategy, run.task.config
    samples, epoch_times = 0, []
    for epoch in range(first_epoch, cfg.epochs):
        run.callbacks.on_epoch_begin(epoch)
        run.sync.share()
        skipped = run.progress.skip  # batches a resumed checkpoint already trained on
        t0 = time.perf_counter()
        try:
            logs = _train_epoch(task, strategy, run.ctx, run.module, run.optimizer, run.callbacks,
                                epoch, run.timing, run.progress, run.sync, run.monitor,
                                run.ends)
        except NonFiniteLoss as e:  # the epoch still ends, with its NaN logs (Keras)
            logs = e.logs(strategy)  # every rank is here
            run.result.stop_reason = "nan_loss"
            if strategy.env.is_main:
                print(e, flush=True)
            if run.monitor is not None:
                run.monitor.stopped("nan_loss", str(e))
            run.owner.stop_training = True
        if run.result.stop_reason != "nan_loss":  # as before: a NaN epoch's are not counted
            samples += _epoch_samples(epoch, cfg, sample_count(task.train), skipped)
        if task.val is not None and cfg.validates_after(epoch):
            val_batch = cfg.validation_batch_size or cfg.batch_size
            limit = None if cfg.validation_steps is None else cfg.validation_steps * val_batch
            run.callbacks.on_test_begin()  # Keras's validation calls the test hooks
            val = evaluate(task, strategy, run.module, task.val, val_batch, "val_", limit,
                           run.ctx, run.callbacks.test_batch_hooks)
            run.callbacks.on_test_end({k.removeprefix("val_"): v for k, v in val.items()})
            logs.update(val)
        epoch_times.append(time.perf_counter() - t0)
        _epoch_end(run, epoch, logs)
        run.sync.share()
        if run.owner.stop_training:
            break
    return samples, epoch_times


def _epoch_end(run: _Run, epoch: int, logs: dict[str, float]) -> None:
    """Epoch-end callbacks (weights gathered first where rank 0 reads them), the History,
    the epoch's checkpoint."""
    ctx, live, result = run.ctx, run.owner.live, run.result
    ctx.mark("gather weights for callbacks")
    live.gather_if(run.strategy.env.distributed and rank0_reads_weights(run.task.callbacks))
    ctx.mark("callbacks (epoch end)")
    run.callbacks.on_epoch_end(epoch, logs)
    live.release()
    result.epochs.append(epoch)
    for k, v in logs.items():
        result.history.setdefault(k, []).append(v)
    # after the History: the checkpoint keeps it; a NaN stop's weights are not worth resuming
    if run.progress.checkpointer is not None and result.stop_reason != "nan_loss":
        ctx.mark("checkpoint")
        run.progress.checkpointer.after_epoch(epoch, run.progress.step)


def _finish(run: _Run) -> None:
    """After training: the communication probe and the run record (when a run_dir is set),
    then the full state for rank 0 (a collective)."""
    task, strategy, ctx, timing = run.task, run.strategy, run.ctx, run.timing
    if task.run_dir is not None:  # every rank has the same run_dir: all probe or none
        ctx.mark("communication probe")
        timing.backward_compute_s = backward_compute_seconds(
            strategy, run.module, timing.last_batch, safe_loss(task.compute_loss),
            autocast_factory(task.config.precision, strategy.env.device))
        if timing.last_batch is not None:
            timing.micro_per_step = len(timing.last_batch.micro)
        write_run_record(task, strategy, run.module, run.optimizer, run.result, timing,
                         run.monitor)
    timing.last_batch = None
    ctx.mark("gather full state")
    settle = getattr(strategy, "settle", None)  # every rank: pushes still in flight land
    if settle is not None:
        settle()
    if task.weights_in_place and _trained_in_place(strategy, run.module, task.module):
        run.result.state_dict = None  # already where the caller reads them: no copy
        return
    state = strategy.full_state_dict(run.module)
    if run.owner.live.final_state is not None:  # EarlyStopping's best epoch, set_weights
        state = {**(state or {}), **run.owner.live.final_state}
    run.result.state_dict = state if strategy.env.is_main else None


def _trained_in_place(strategy, module, original) -> bool:
    """Whether one process trained `original` itself, with plain (unsharded) parameters."""
    return (strategy.env.world_size == 1 and strategy.unwrap(module) is original
            and not any(hasattr(p, "to_local") for p in original.parameters()))


def _monitor(task, strategy) -> RunMonitor | None:
    """Rank 0's RunMonitor when the fit keeps a run record (bigtrain doctor reads it)."""
    if task.run_dir is None or not strategy.env.is_main:
        return None
    return RunMonitor(save=lambda m: write_local_record(task, strategy, None, m))


def _epoch_samples(epoch: int, cfg, n: int, skipped: int = 0) -> int:
    """Samples this fit trained in epoch `epoch`: all `n` unless steps_per_epoch cuts the
    pass, less the first `skipped` batches (trained before a resume, by another fit)."""
    if n is None:  # a stream of unknown length: its nominal steps
        return max(0, (cfg.steps_per_epoch or 0) - skipped) * cfg.batch_size
    _, first, stop = epoch_window(epoch, cfg.steps_per_epoch, num_batches(n, cfg.batch_size))
    return max(0, min(n, stop * cfg.batch_size) - (first + skipped) * cfg.batch_size)
