"""StepContext: what the engine hands a strategy for one fit's steps, passed explicitly.

The engine's loop builds one StepContext per fit (the hang watchdog's Heartbeat, the
PhaseTimer of the step-time breakdown, the float16 GradScaler) and passes it to every
step method of the strategy (`sync_grads`, `optimizer_step`, and `train_step` of a
strategy that runs its own schedule). A strategy never stores it: nothing is set on the
strategy and nothing has to be cleaned off it afterwards.

It lives here, below the engine, because the strategies that receive it are here; a step
run outside the engine (a test, a benchmark) gets `StepContext()`, which marks nothing and
scales nothing.

Example:
    ctx = StepContext(heartbeat=Heartbeat(), timer=PhaseTimer(device))
    ctx.mark("gradient all-reduce", phase="comm"); all_reduce(...)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bigtrain.parallel.update_rules import rules_of


@dataclass
class StepContext:
    """Instrumentation and loss scaling for the steps of one fit.

    Attributes:
        heartbeat: a bigtrain.diagnose.watchdog.Heartbeat the hang watchdog reads, or None.
        timer: a bigtrain.diagnose.step_timer.PhaseTimer that times the marked phases, or None.
        grad_scaler: a torch.amp.GradScaler for precision="16-mixed", else None.
        step_start: (time.perf_counter(), time.process_time()) in seconds when the current
            step began, set by `begin_step`, which the engine calls only for a strategy with
            `reads_step_clock` (speed-aware balancing); (0.0, 0.0) otherwise.
    """
    heartbeat: object = None
    timer: object = None
    grad_scaler: torch.amp.GradScaler | None = None
    step_start: tuple[float, float] = (0.0, 0.0)

    def begin_step(self) -> None:
        """Note the clocks at the start of a step (see `step_start`)."""
        self.step_start = (time.perf_counter(), time.process_time())

    def mark(self, op: str, step: int | None = None, phase: str | None = None) -> None:
        """Note that this rank enters operation `op` (for the hang watchdog's report and the
        step-time breakdown).

        One attribute write and a clock read, no synchronisation; every rank must mark the
        same sequence of operations (a rank that marked fewer is reported as behind). The
        time until the next mark is charged to `phase` ("data", "forward", "backward",
        "optimizer", "comm", "other"); by default to the op's first word when that names a
        phase, else to nothing (see bigtrain.diagnose.step_timer).

        Example:
            ctx.mark("all-gather", phase="comm"); gather(...)
        """
        if self.heartbeat is not None:
            self.heartbeat.enter(op, step)
        timer = self.timer
        if timer is not None and timer.active:  # a step the timer samples
            timer.enter(op, phase)

    def reads_marks(self) -> bool:
        """Whether anything reads marks (a watchdog's heartbeat or a phase timer); without,
        a loop that marks every step skips the calls (one process without a run record)."""
        return self.heartbeat is not None or self.timer is not None

    def mark_fn(self):
        """`mark`, or a no-op where nothing reads marks (`reads_marks`)."""
        return self.mark if self.reads_marks() else _no_mark

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` times the float16 loss scale (as is without a GradScaler)."""
        return loss if self.grad_scaler is None else self.grad_scaler.scale(loss)

    def step_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()`; under float16 through the loss scaler, which unscales the
        gradients first and skips a step whose gradients overflowed (then lowers the scale)."""
        if self.grad_scaler is None:
            optimizer.step()
            return
        if _clips(optimizer):  # clipping reads true gradients: unscale them first
            self.grad_scaler.unscale_(optimizer)
        self.grad_scaler.step(optimizer)
        self.grad_scaler.update()


def _clips(optimizer) -> bool:
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer's local one
    rules = rules_of(inner) or rules_of(optimizer)
    return rules is not None and rules.clips


def _no_mark(op: str, step: int | None = None, phase: str | None = None) -> None:
    """`StepContext.mark` where nothing reads marks."""
