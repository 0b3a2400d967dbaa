"""Loss and metrics over a data set, sharded across ranks and reduced: validation inside fit
(the loop calls it) and `Model.evaluate`.

Every rank runs the same number of forwards: a sharded strategy (FSDP) all-gathers the
parameters in each forward, so a rank whose shard has fewer batches runs the missing ones on
a padding batch whose results are not counted (else the other ranks wait for it for ever)."""
from __future__ import annotations

import torch

from bigtrain.engine.data import num_batches, shard_bounds
from bigtrain.engine.steps import Tally, autocast_factory
from bigtrain.engine.task import TrainTask
from bigtrain.parallel.base import Strategy
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.microbatch import call_module


def evaluate(task: TrainTask, strategy: Strategy, module, data, batch_size: int,
             prefix: str = "", limit: int | None = None,
             ctx: StepContext | None = None, hooks=None) -> dict[str, float]:
    """Loss and metrics over `data` (its first `limit` samples when given), sharded across
    ranks and reduced; Keras-style logs. `ctx`: the fit's StepContext (marks for the hang
    watchdog), None outside a fit. `hooks`: a CallbackList whose `on_test_batch_begin` /
    `on_test_batch_end` run around each of this rank's batches (the end's logs: Keras's
    running means over this rank's batches so far), or None."""
    ctx = StepContext() if ctx is None else ctx
    device = strategy.env.device
    tally = Tally(task.metrics, task.activations, device)
    index, count = strategy.data_shard()
    total = len(data) if limit is None else min(limit, len(data))
    lo, hi = shard_bounds(total, index, count)
    # every rank runs as many forwards as shard 0, the largest, has batches
    steps = num_batches(shard_bounds(total, 0, count)[1], batch_size)
    autocast = autocast_factory(task.config.precision, device)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for step in range(steps):
            ctx.mark("evaluate")  # per batch: restarts the watchdog's clock only
            start = lo + step * batch_size
            if start >= hi:  # this shard is done: a forward to keep step with the others
                _forward(module, data, _padding_rows(lo, hi), device, autocast)
                continue
            idx = torch.arange(start, min(start + batch_size, hi))
            if hooks is not None:
                hooks.on_test_batch_begin(step)
            y, sw, out = _forward(module, data, idx, device, autocast)
            loss = task.compute_loss(out, y, sw)
            tally.loss_sum += loss.double() * len(idx)
            tally.count += len(idx)
            tally.update_metrics(y, out, sw)
            if hooks is not None:
                hooks.on_test_batch_end(step, tally.running_logs())
    module.train(was_training)
    ctx.mark("metrics all-reduce (evaluate)")
    return tally.logs(strategy.all_reduce(tally.state()), prefix)


def _forward(module, data, idx: torch.Tensor, device, autocast):
    """(targets, sample_weight, outputs) of rows `idx`."""
    x, y, sw = data.take(idx, device)
    with autocast():
        out = call_module(module, x)
    return y, sw, out


def _padding_rows(lo: int, hi: int) -> torch.Tensor:
    """One real row for a padding forward (any layer takes it, unlike an empty batch): this
    shard's first, or the data's first when the shard is empty."""
    return torch.tensor([lo if hi > lo else 0])
