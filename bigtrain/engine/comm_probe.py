"""How long backward waits for gradient communication it could not hide (DDP, FSDP).

DDP all-reduces gradient buckets while backward still runs and FSDP reduce-scatters them
the same way; what the step pays is the part that outlasts the compute: the wait at the end
of backward. Timing backward alone cannot tell that wait from compute, so at the end of a
fit every rank runs a short probe on one training micro-batch: forward + backward with the
gradient sync skipped (`strategy.no_sync`), `repeats` times, then once with the sync (FSDP
flushes what no_sync kept). The probe gives backward's compute (the median unsynced pass); the run record moves what
the run's own backward took beyond that compute to comm_exposed (engine/record.py). The
run's backward, not a synced probe pass, is the reference: a few back-to-back synced passes
of an idle job are faster than the same all-reduces inside training on a busy host, so a
synced-minus-unsynced probe missed most of the wait where small all-reduces dominate.

The probe changes nothing the run keeps: no optimizer step, gradients are dropped after
the synced pass, buffers (batch-norm statistics) and random-number state are restored.
Every rank must call it (the synced pass is a collective).

Example:
    seconds = backward_compute_seconds(strategy, module, batch, task.compute_loss, autocast)
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch

from bigtrain.parallel.base import StepBatch, Strategy
from bigtrain.parallel.microbatch import call_module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_backward(strategy, module, micro, compute_loss, autocast, sync: bool) -> float:
    x, y, sw = micro
    device = strategy.env.device
    with contextlib.nullcontext() if sync else strategy.no_sync(module):
        with autocast():
            out = call_module(module, x)
            loss = compute_loss(out, y, sw)
        _sync(device)
        t0 = time.perf_counter()
        loss.backward()
        _sync(device)
        return time.perf_counter() - t0


def backward_compute_seconds(strategy: Strategy, module, batch: StepBatch | None,
                             compute_loss, autocast, repeats: int = 5) -> float | None:
    """Seconds of one micro-batch's backward on this rank without its gradient sync.

    Args:
        strategy: the run's strategy (already set up); probed only when it is distributed
            and `syncs_in_backward`.
        module: the wrapped module from `strategy.setup_module`.
        batch: a training batch of this rank (its last micro-batch is used).
        compute_loss: `compute_loss(outputs, targets, sample_weight) -> scalar`.
        autocast: the run's mixed-precision context factory.
        repeats: unsynced passes timed.

    Returns:
        The median unsynced backward in seconds, or None when the strategy has no
        in-backward sync to probe.
    """
    if batch is None or not strategy.env.distributed or not strategy.syncs_in_backward:
        return None
    device = strategy.env.device
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    times = []
    was_training = module.training
    module.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(repeats):
            times.append(_timed_backward(strategy, module, batch.micro[-1], compute_loss,
                                         autocast, sync=False))
        # one synced pass last, untimed: FSDP flushes what no_sync kept
        _timed_backward(strategy, module, batch.micro[-1], compute_loss, autocast, sync=True)
        for p in module.parameters():
            p.grad = None
    with torch.no_grad():
        for b, saved in buffers:
            b.copy_(saved)
    module.train(was_training)
    return statistics.median(times)
