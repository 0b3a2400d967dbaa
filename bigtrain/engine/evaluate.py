"""Loss and metrics over a data set, sharded across ranks and reduced: validation inside fit
(the loop calls it) and `Model.evaluate`."""
from __future__ import annotations

import torch

from bigtrain.engine.data import shard_bounds
from bigtrain.engine.steps import Tally, autocast_factory
from bigtrain.engine.task import TrainTask
from bigtrain.parallel.base import Strategy
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.microbatch import call_module


def evaluate(task: TrainTask, strategy: Strategy, module, data, batch_size: int,
             prefix: str = "", limit: int | None = None,
             ctx: StepContext | None = None) -> dict[str, float]:
    """Loss and metrics over `data` (its first `limit` samples when given), sharded across
    ranks and reduced; Keras-style logs. `ctx`: the fit's StepContext (marks for the hang
    watchdog), None outside a fit."""
    ctx = StepContext() if ctx is None else ctx
    device = strategy.env.device
    tally = Tally(task.metrics, task.activations, device)
    shard = strategy.data_shard()
    lo, hi = shard_bounds(len(data) if limit is None else min(limit, len(data)), *shard)
    autocast = autocast_factory(task.config.precision, device)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for start in range(lo, hi, batch_size):
            ctx.mark("evaluate")  # per batch: restarts the watchdog's clock only
            idx = torch.arange(start, min(start + batch_size, hi))
            x, y, sw = data.take(idx, device)
            with autocast():
                out = call_module(module, x)
            loss = task.compute_loss(out, y, sw)
            tally.loss_sum += loss.double() * len(idx)
            tally.count += len(idx)
            tally.update_metrics(y, out)
    module.train(was_training)
    ctx.mark("metrics all-reduce (evaluate)")
    return tally.logs(strategy.all_reduce(tally.state()), prefix)
