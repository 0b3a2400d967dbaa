"""TerminateOnNaN on every rank at once: the loop's check of the steps' losses.

Example:
    check = FiniteCheck(cfg, epoch, first=0, strategy=strategy, tally=tally)
    check.after_step(step, mark)          # every `cfg.nan_check_every` steps: one all-reduce
"""
from __future__ import annotations

import torch

from bigtrain.engine.steps import Tally
from bigtrain.parallel.base import Strategy


class NonFiniteLoss(Exception):
    """`tally`: the stopped epoch's, whose logs (loss NaN/Inf) the History keeps; `step`:
    the first step (of the tally's pass) whose loss was not finite on some rank."""

    def __init__(self, message: str, tally: Tally, step: int = 0):
        super().__init__(message)
        self.tally, self.step = tally, step

    def logs(self, strategy: Strategy) -> dict[str, float]:
        """The stopped epoch's logs on every rank (two all-reduces: call it on all).

        Keras's TerminateOnNaN stops at the bad batch, so its epoch loss is the running
        mean through that batch: the bad loss itself (inf stays inf, NaN stays NaN). The
        check's interval let later steps run (their losses NaN once the weights are), so
        the loss is that step's losses summed over the ranks, not the pass's mean."""
        logs = self.tally.logs(strategy.all_reduce(self.tally.state()))
        bad = self.tally.first_non_finite_loss()
        mine = bad if self.tally.first_non_finite() == self.step else torch.zeros_like(bad)
        logs["loss"] = float(strategy.all_reduce(mine.reshape(1).clone()))
        return logs


class FiniteCheck:
    """TerminateOnNaN across ranks: every `every` steps (and at the epoch's end) each rank
    reads the first non-finite loss of its pass from the tally (which holds the steps'
    losses) and one all-reduce takes the earliest; every rank stops together."""

    def __init__(self, cfg, epoch: int, first: int, strategy: Strategy, tally: Tally):
        self.every, self.batch_size, self.epoch = cfg.nan_check_every, cfg.batch_size, epoch
        self.strategy, self.first, self.last = strategy, first, first
        self.tally = tally
        tally.watch_finite = True

    def after_step(self, step: int, mark) -> None:
        if step + 1 - self.last >= self.every:
            mark("loss check all-reduce", phase="comm")
            self.check(step + 1)

    def check(self, next_last: int) -> None:
        """A collective: every rank calls it at the same steps, with or without losses."""
        # the tally counts its steps from this pass's first, `first` (a resumed epoch's)
        flag = torch.tensor([self.first + self.tally.first_non_finite()])
        self.strategy.all_reduce(flag, op="min")  # every rank stops together
        self.last = next_last
        if torch.isfinite(flag):
            step, size = int(flag), self.batch_size
            raise NonFiniteLoss(
                f"TerminateOnNaN: the loss became NaN/Inf at epoch {self.epoch + 1}, step "
                f"{step + 1} (global batch {step} of this epoch: samples {step * size}.."
                f"{(step + 1) * size - 1} of this epoch's order). Check the inputs for "
                "NaN/Inf (bigtrain doctor), lower the learning rate, or use gradient "
                "clipping.", self.tally, step - self.first)
