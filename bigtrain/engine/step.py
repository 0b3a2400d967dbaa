"""The one training step: micro-batches, gradient accumulation, autocast, loss scaling.

Every strategy's step runs here; a strategy only supplies hooks (bigtrain.parallel.base):

    for each micro-batch k of this rank's share (StepBatch, weights w_k):
        forward under autocast, loss_k = compute_loss(...)
        strategy.backward(ctx.scale(loss_k * w_k))      # inside strategy.no_sync(module)
                                                         # for all but the last micro-batch
    strategy.sync_grads(module, optimizer, batch, ctx)   # explicit all-reduce, if any
    strategy.optimizer_step(optimizer, ctx)              # through the float16 loss scaler
    optimizer.zero_grad(set_to_none=True)

A strategy that runs its own schedule (`owns_step`: pipeline, parameter server) gets the
whole batch in `strategy.train_step(..., ctx)` instead. The loss weights w_k are
(micro-batch samples) / (global batch samples) x replicas (see make_step_batch), so that
averaged gradients equal the gradient of the global batch's mean loss; with one micro-batch
of weight 1 the loss is used as is.

Example:
    outputs, loss = train_step(strategy, ctx, module, optimizer, batch, loss_fn, autocast)
"""
from __future__ import annotations

import contextlib

import torch

from bigtrain.parallel.base import StepBatch, Strategy
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.microbatch import call_module


def train_step(strategy: Strategy, ctx: StepContext, module, optimizer, batch: StepBatch,
               compute_loss, autocast) -> tuple[list, torch.Tensor]:
    """Forward, backward and update for one global batch; returns (outputs, loss).

    Args:
        strategy: the run's strategy (after setup_module / setup_optimizer).
        ctx: the fit's StepContext (marks, timer, loss scaler).
        module: the module returned by `setup_module`.
        optimizer: from `setup_optimizer`.
        batch: this rank's micro-batches and their loss weights.
        compute_loss: `compute_loss(outputs, targets, sample_weight) -> scalar mean loss`.
        autocast: a zero-argument context manager factory for mixed precision.

    Returns:
        (list of outputs per micro-batch, detached mean loss of this rank's samples).
    """
    if strategy.owns_step:
        return strategy.train_step(module, optimizer, batch, compute_loss, autocast, ctx)
    if strategy.reads_step_clock:
        ctx.begin_step()
    marks = ctx.reads_marks()  # nothing reads them: no call per mark
    outputs, total = [], 0.0
    last = len(batch.micro) - 1
    whole = last == 0 and batch.weights[0] == 1.0  # the common case: no loss rescaling
    for i, ((x, y, sw), w) in enumerate(zip(batch.micro, batch.weights)):
        scale = None if whole else w
        if i == last:  # gradients synchronise in this backward
            out, loss = _micro_step(strategy, ctx, module, (x, y, sw), scale, compute_loss,
                                    autocast, "backward (+ gradient sync)" if marks else None)
        else:
            with strategy.no_sync(module):
                out, loss = _micro_step(strategy, ctx, module, (x, y, sw), scale, compute_loss,
                                        autocast, "backward" if marks else None)
        held = out.detach() if isinstance(out, torch.Tensor) else out
        if held is not out and hasattr(out, "_keras_mask"):  # masked metrics read it
            held._keras_mask = out._keras_mask
        outputs.append(held)
        total = loss.detach() if whole else total + loss.detach() * w
    strategy.sync_grads(module, optimizer, batch, ctx)
    if marks:
        ctx.mark("optimizer step")
    strategy.optimizer_step(optimizer, ctx)
    optimizer.zero_grad(set_to_none=True)
    return outputs, total if whole else total / max(sum(batch.weights), 1e-12)


def _micro_step(strategy, ctx, module, micro, scale, compute_loss, autocast, backward_op):
    """Forward and backward of one micro-batch `(x, y, sample_weight)`, its loss times
    `scale` (None: as is); returns (outputs, unscaled loss). `backward_op`: the mark
    before backward (None: nothing reads marks, and "forward" is not marked either)."""
    x, y, sw = micro
    if backward_op is not None:
        ctx.mark("forward")
    if autocast is contextlib.nullcontext:  # full precision: no context to enter
        out = call_module(module, x)
        loss = compute_loss(out, y, sw)
    else:
        with autocast():
            out = call_module(module, x)
            loss = compute_loss(out, y, sw)
    if backward_op is not None:
        ctx.mark(backward_op)
    strategy.backward(ctx.scale(loss if scale is None else loss * scale))
    return out, loss
