"""The steps of one training epoch: the general loop, and a fused one for the plain case.

Every step runs the same sequence (bigtrain.engine.loop owns the epoch around it):

    batch-begin hooks -> the step batch -> train_step (forward, backward, update)
    -> tally.add -> the loss check -> batch-end hooks -> progress (checkpoint)

The general loop (`_general_steps`) goes through the strategy's hooks (bigtrain.engine.step)
and marks every phase for the hang watchdog and the run record's phase timer. On a small
model each Python call costs the step a measurable share of its time on a CPU (bench_fit's
`overhead_probe`), so where a condition checked once per epoch shows the hooks would do
nothing but the plain update (`fused_ok`: one process, nothing reads marks, no loss scaler,
the base strategy's hooks, array data already on the device, one micro-batch of weight 1),
`_plain_steps` runs the same operations in one loop: the same aten ops in the same order,
so both train to identical weights and logs (tests/engine/test_epoch_steps.py).

Example:
    last_batch = run_steps(EpochSteps(...))   # the epoch's last StepBatch (None: no step)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from bigtrain.engine.feed import Feed
from bigtrain.engine.finite_check import FiniteCheck
from bigtrain.engine.resume import Progress
from bigtrain.engine.step import train_step
from bigtrain.engine.steps import Tally
from bigtrain.parallel.base import StepBatch, Strategy
from bigtrain.parallel.context import StepContext


@dataclass
class EpochSteps:
    """What the steps of one epoch read, decided before its first step.

    Attributes:
        feed: the epoch's step batches (bigtrain.engine.feed).
        compute_loss: the task's `compute_loss(outputs, targets, sample_weight)`;
            `loss_fn` is it wrapped by `safe_loss` (empty batches, dict outputs).
        autocast: a zero-argument context-manager factory (`autocast_factory`).
        begin_hooks, end_hooks: whether a callback has batch-begin / batch-end hooks;
            want_logs: whether those read the running logs; global_logs: whether they get
            the global batch's logs (an all-reduce per step, several ranks).
        finite: the loss check (TerminateOnNaN), or None.
        timing: the loop's RunTiming (steps run; the phase timer, or None).
    """
    strategy: Strategy
    ctx: StepContext
    module: object
    optimizer: object
    feed: Feed
    compute_loss: object
    loss_fn: object
    autocast: object
    tally: Tally
    finite: FiniteCheck | None
    progress: Progress
    callbacks: object
    sync: object
    timing: object
    epoch: int
    begin_hooks: bool = False
    end_hooks: bool = False
    want_logs: bool = False
    global_logs: bool = False


def run_steps(e: EpochSteps) -> StepBatch | None:
    """Train the epoch's steps from `e.progress.skip`; returns the last step's batch (None
    when no step ran), kept for the end-of-fit communication probe."""
    return _plain_steps(e) if fused_ok(e) else _general_steps(e)


def _is_base(obj, cls, name: str) -> bool:
    """Whether `obj.name` is `cls`'s own method (not overridden by a subclass or patched
    onto the instance)."""
    return getattr(getattr(obj, name), "__func__", None) is getattr(cls, name)


def fused_ok(e: EpochSteps) -> bool:
    """Whether `_plain_steps` does exactly what `_general_steps` would, checked once per
    epoch: one process, no mark read (no watchdog, no phase timer), no float16 loss scaler,
    the base Strategy's and StepContext's step hooks, and a plain array feed (one
    micro-batch of weight 1 per step: no accumulation, sharding or sample weights)."""
    s, ctx = e.strategy, e.ctx
    return (not s.env.distributed and not s.owns_step and not s.reads_step_clock
            and ctx.heartbeat is None and ctx.timer is None and ctx.grad_scaler is None
            and e.feed.plain is not None and s.grad_replicas == 1
            and all(_is_base(s, Strategy, n) for n in ("backward", "sync_grads",
                                                        "optimizer_step"))
            and _is_base(ctx, StepContext, "step_optimizer") and not e.global_logs)


def _plain_steps(e: EpochSteps) -> StepBatch | None:
    """The steps of `_general_steps` for the plain case (`fused_ok`), as one loop: the
    step's operations inline, no marks, the per-step checks of the hooks made here once."""
    module, optimizer, compute, loss_fn, tally = (e.module, e.optimizer, e.compute_loss,
                                                  e.loss_fn, e.tally)
    progress, finite, callbacks, sync, timing = e.progress, e.finite, e.callbacks, e.sync, e.timing
    full = e.autocast is contextlib.nullcontext  # full precision: no context to enter
    ckpt, steps, first = progress.checkpointer, e.feed.steps, progress.skip
    tensor = torch.Tensor
    order = xb = yb = None
    for step in range(first, steps):
        if e.begin_hooks:
            callbacks.on_train_batch_begin(step)
        if sync.batch_begin:
            sync.share()
        if order is None:  # once, where the general feed reads it: at the first step
            x, y, order = e.feed.plain()
        gidx = order[step - first]
        xb, yb = x.index_select(0, gidx), y.index_select(0, gidx)
        if full:
            out = module(xb)
            # safe_loss's checks: a tensor with rows needs none of them
            plain = type(out) is tensor
            loss = compute(out, yb, None) if plain and out.shape[0] else loss_fn(out, yb, None)
        else:
            with e.autocast():
                out = module(xb)
                loss = loss_fn(out, yb, None)
            plain = type(out) is tensor
        if loss.requires_grad:  # Strategy.backward
            loss.backward()
        held = out.detach() if plain or isinstance(out, tensor) else out
        if held is not out and hasattr(out, "_keras_mask"):  # masked metrics read it
            held._keras_mask = out._keras_mask
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timing.steps += 1
        tally.add_one(yb, held, loss.detach())
        if finite is not None and step + 1 - finite.last >= finite.every:
            finite.check(step + 1)
        if e.end_hooks:
            callbacks.on_train_batch_end(step, tally.running_logs() if e.want_logs else {})
        if sync.batch_end:
            sync.share()
        if ckpt is None:
            progress.step += 1
        else:
            progress.after_step(e.epoch, step, steps)
        if sync.owner.stop_training:  # set in a batch hook: stop after this batch (Keras)
            break
    return None if xb is None else StepBatch(micro=[(xb, yb, None)], weights=[1.0])


def _general_steps(e: EpochSteps) -> StepBatch | None:
    """Each step through the strategy's hooks (`train_step`), every phase marked where a
    watchdog or the phase timer reads marks (decided once: no call per mark otherwise)."""
    ctx, progress, finite, tally, sync, timing = (e.ctx, e.progress, e.finite, e.tally,
                                                  e.sync, e.timing)
    marks, mark, timer, feed = ctx.reads_marks(), ctx.mark_fn(), timing.timer, e.feed
    batch = None
    for step in feed.step_numbers(progress.skip, e.epoch):
        if marks:
            mark("callbacks (batch begin)", progress.step)
        if e.begin_hooks:
            e.callbacks.on_train_batch_begin(step)
        if sync.batch_begin:  # a rate rank 0's hook set must hold for this step everywhere
            sync.share()
        if timer is not None:
            timer.begin_step(timing.steps)
        if marks:
            mark("data")
        _, batch = feed.next()
        if marks:  # strategies refine it: forward, backward, optimizer step, communication
            mark("train step", phase="other")
        outputs, loss = train_step(e.strategy, ctx, e.module, e.optimizer, batch, e.loss_fn,
                                   e.autocast)
        if marks:
            mark("metrics")
        timing.steps += 1
        tally.add(batch, outputs, loss)
        if finite is not None and step + 1 - finite.last >= finite.every:
            finite.after_step(step, mark)
        if marks:
            mark("callbacks (batch end)")
        if e.global_logs:
            logs = tally.logs(e.strategy.all_reduce(tally.state()))
        else:
            logs = tally.running_logs() if e.want_logs else {}
        if e.end_hooks:
            e.callbacks.on_train_batch_end(step, logs)
        if sync.batch_end:
            sync.share()
        if marks:
            mark("checkpoint" if progress.checkpointer else "step end")
        progress.after_step(e.epoch, step, feed.steps)
        if sync.owner.stop_training:  # set in a batch hook: stop after this batch (Keras)
            break
    return batch
