"""Where a training step's time goes, read off the points the step already marks.

The engine's loop and every strategy call `StepContext.mark(op)` when the rank enters an
operation (for the hang watchdog). While a fit runs, the loop's StepContext also carries a
PhaseTimer: each mark closes the phase that was open and opens the next, so the time
between two marks is charged to the earlier one. Which phase an operation belongs to:

    mark("data")                              -> data
    mark("forward") / mark("backward ...")    -> forward / backward   (by the first word)
    mark("optimizer step")                    -> optimizer
    mark("gradient all-reduce", phase="comm") -> comm (explicitly timed communication)
    mark("train step", phase="other")         -> other (step time no strategy refined)
    anything else (callbacks, evaluation)     -> not timed

On a CPU ops run synchronously, so a step is timed exactly for one perf_counter call and
one dict update per mark; the first `exact_steps` steps are all timed, then about one in
`cpu_every` (the marks of a small model's step cost it a few per cent otherwise: bench_fit's
probe). On an accelerator the timer synchronises the device at each mark of about one step
in `sample_every` and ignores the others, so most steps keep their asynchronous overlap.
Which steps are sampled is a hash of the step number: the same steps on every rank, with no
period that an operation run every k steps (the loss check every 50) could keep falling
between. A sampled step counts `every` times in the means, as the steps it stands for, so
the exactly timed first steps do not outweigh the rest of a run. The first timed step
(allocator, autograd and bucket warm-up) is left out of the means whenever later steps
exist.

The timer also keeps each timed step's own work (StepSamples: data, forward and optimizer
seconds of up to MAX_STEP_SAMPLES steps spread over the run, the same steps on every rank),
which the doctor reads to tell a rank that is slow step after step from one that was slow
for a while.

The timer also measures the memory of the fit's first step (a StepMemory, see
bigtrain.diagnose.step_memory): saved activations and gradients. That step is timed but left
out of the means, so the probe costs the means nothing.

Example:
    timer = PhaseTimer()
    timer.begin_step(0); timer.enter("data"); ...; timer.enter("forward"); ...
    timer.enter("callbacks (batch end)")
    timer.means()          # {"data": s, "forward": s, ...} per timed step
"""
from __future__ import annotations

import time

import torch

from bigtrain.diagnose.step_memory import StepMemory

PHASES = ("data", "forward", "backward", "optimizer", "comm", "other")
#: the phases a step's sample adds up (StepSamples): the rank's own work without backward
OWN_PHASES = frozenset({"data", "forward", "optimizer"})
MAX_STEP_SAMPLES = 64  # per-step samples a rank keeps (StepSamples)
_FIRST_WORD = {"data": "data", "forward": "forward", "backward": "backward",
               "optimizer": "optimizer"}
_BY_OP: dict[str, str | None] = {}  # op -> phase_of(op), filled as ops are first seen


def phase_of(op: str, phase: str | None = None) -> str | None:
    """The phase `op` is charged to: `phase` when given, else by the op's first word."""
    if phase is not None:
        if phase not in PHASES:
            raise ValueError(f"unknown step phase {phase!r}; valid phases: {', '.join(PHASES)}")
        return phase
    return _FIRST_WORD.get(op.split(" ", 1)[0])


class StepSamples:
    """Each timed step's own work, for the doctor's straggler check: whether a rank was
    slower step after step or only on average (a burst of load from another process on a
    shared host raises one rank's mean for a while).

    A sample is the step's data, forward and optimizer seconds. Backward is left out: a
    data-parallel backward holds the wait for the other ranks' gradients (the sync runs
    inside it), so a fast rank's backward grows by what the slow one costs and a sum with
    it would hide who was slow. At most MAX_STEP_SAMPLES samples are kept, spread over the
    run: every `stride`-th timed step, the stride doubling (and every other sample dropped)
    when the list is full. Every rank times the same steps, so the i-th sample of every
    rank is the same step.
    """

    def __init__(self, limit: int = MAX_STEP_SAMPLES):
        self.values: list[float] = []  # seconds, one per kept step
        self.current = 0.0  # seconds of the step being timed so far
        self._limit, self._stride, self._seen = limit, 1, 0

    def add(self, phase: str | None, seconds: float) -> None:
        if phase in OWN_PHASES:
            self.current += seconds

    def end_step(self, keep: bool) -> None:
        """The timed step is over: keep its sample (not for the warm-up step)."""
        if keep:
            if self._seen % self._stride == 0:
                self.values.append(self.current)
                if len(self.values) > self._limit:
                    self.values, self._stride = self.values[::2], 2 * self._stride
            self._seen += 1
        self.current = 0.0


class PhaseTimer:
    """Seconds per step phase, accumulated between `StepContext.mark` calls.

    Args:
        device: the rank's device; a CUDA device is synchronised at each mark of a
            sampled step (None or CPU: never).
        sample_every: on an accelerator, time about one step in this many.
        cpu_every, exact_steps: on a CPU, time the first `exact_steps` steps, then about
            one step in `cpu_every`.

    Attributes:
        sample_every: the sampling period in use (`cpu_every` on a CPU).
        exact_steps: steps timed one by one before sampling starts (0 on an accelerator).
        synchronises: whether a timed step synchronises the device.
        timed_steps: steps timed so far.
        memory: the first step's measured memory (StepMemory).
        samples: each timed step's own work but the first (StepSamples).
    """

    def __init__(self, device: torch.device | None = None, sample_every: int = 50,
                 cpu_every: int = 8, exact_steps: int = 16):
        if min(sample_every, cpu_every) < 1:
            raise ValueError(f"sample_every and cpu_every must be >= 1, got {sample_every} "
                             f"and {cpu_every}")
        self._cuda = device if device is not None and device.type == "cuda" else None
        self.synchronises = self._cuda is not None
        self.sample_every = cpu_every if self._cuda is None else sample_every
        self.exact_steps = exact_steps if self._cuda is None else 0
        self.totals = dict.fromkeys(PHASES, 0.0)  # weighted seconds
        self.timed_steps = 0
        self.active = False
        self._weight = 1.0  # steps the step being timed stands for
        self._weights = 0.0  # steps the timed steps stand for
        self._warm: tuple | None = None  # (totals, weights) after the first timed step
        self._phase: str | None = None
        self._t = 0.0
        self.memory = StepMemory()
        self.samples = StepSamples()

    def begin_step(self, step: int) -> None:
        """Start optimizer step `step` (0-based within the fit): timed or not."""
        self._close()
        if step == 0:
            self.memory.open()
        elif self.memory.is_open:
            self.memory.close()
        exact = step < self.exact_steps
        self.active = exact or sampled(step, self.sample_every)
        if self.active:
            if self.timed_steps == 1:
                self._warm = (dict(self.totals), self._weights)
            self.timed_steps += 1
            self._weight = 1.0 if exact else float(self.sample_every)
            self._weights += self._weight

    def enter(self, op: str, phase: str | None = None) -> None:
        """The rank enters `op`: charge the time since the last mark to the open phase."""
        if self.memory.is_open and op == "metrics":  # the loop's mark after a step
            self.memory.close()
        if not self.active:
            return
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        now = time.perf_counter()
        if self._phase is not None:
            self.totals[self._phase] += (now - self._t) * self._weight
            self.samples.add(self._phase, now - self._t)
        if phase is None:
            phase = _BY_OP[op] if op in _BY_OP else _BY_OP.setdefault(op, phase_of(op))
        elif phase not in self.totals:
            phase_of(op, phase)  # raises, naming the valid phases
        self._phase, self._t = phase, now

    def split_current(self, phase: str, seconds: float) -> None:
        """Of the phase open now, `seconds` belong to `phase` (a strategy that measured
        part of an unsplit phase itself, e.g. a pipeline stage's compute, moves it)."""
        if self.active and self._phase is not None and seconds > 0:
            self.totals[phase] += seconds * self._weight
            self.totals[self._phase] -= seconds * self._weight
            self.samples.add(phase, seconds)
            self.samples.add(self._phase, -seconds)

    def _close(self) -> None:
        if self.active and self._phase is not None:
            seconds = time.perf_counter() - self._t
            self.totals[self._phase] += seconds * self._weight
            self.samples.add(self._phase, seconds)
        if self.active:
            self.samples.end_step(keep=self.timed_steps > 1)  # the first is warm-up
        self._phase = None

    def means(self) -> dict[str, float]:
        """Mean seconds per step in each phase over the timed steps, each weighted by the
        steps it stands for (the first step left out when others exist); zeros when no step
        was timed."""
        self._close()
        self.memory.close()
        self.active = False
        if self._warm is not None and self.timed_steps > 1:
            totals, weights = self._warm
            n = self._weights - weights
            return {p: (self.totals[p] - totals[p]) / n for p in PHASES}
        n = max(self._weights, 1.0)
        return {p: self.totals[p] / n for p in PHASES}


def sampled(step: int, every: int) -> bool:
    """Whether step `step` is one of about one in `every` (step 0 always is): a
    multiplicative hash of the step, so the same steps on every rank and no fixed period."""
    return every == 1 or (((step * 0x9E3779B1) & 0xFFFFFFFF) >> 16) % every == 0


def gather_step_samples(timer: PhaseTimer | None, all_reduce, rank: int,
                        world_size: int) -> list[list[float]]:
    """Every rank's step samples (StepSamples.values), by rank; [] on one process.

    Collective: one all-reduce(sum) of a world_size x (MAX_STEP_SAMPLES + 1) float64 table
    in which each rank fills its own row (count, then samples); every rank must call it.

    Args:
        timer: this rank's PhaseTimer (None: the rank timed nothing).
        all_reduce: in-place sum over all ranks, e.g. `strategy.all_reduce`.
        rank, world_size: this rank and the job's size.
    """
    if world_size < 2:
        return []
    table = torch.zeros(world_size, MAX_STEP_SAMPLES + 1, dtype=torch.float64)
    mine = [] if timer is None else timer.samples.values[:MAX_STEP_SAMPLES]
    table[rank, 0] = len(mine)
    table[rank, 1:1 + len(mine)] = torch.tensor(mine, dtype=torch.float64)
    all_reduce(table)
    return [row[1:1 + int(row[0])].tolist() for row in table]
