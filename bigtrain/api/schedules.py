"""Keras's learning-rate schedules, as plain Python: `bigtrain.optimizers.schedules`.

A schedule maps the optimizer's step count (0 for the first step, as Keras's `iterations`)
to that step's learning rate. Pass one as an optimizer's `learning_rate`; every rank
computes the same value from the same count, so sharded and data-parallel runs step alike.

Example:
    from bigtrain.optimizers import Adam, schedules
    lr = schedules.ExponentialDecay(1e-2, decay_steps=1000, decay_rate=0.9)
    model.compile(optimizer=Adam(learning_rate=lr), loss="mse")
"""
from __future__ import annotations

import math


class LearningRateSchedule:
    """Base class: override `__call__(step) -> float` (and `get_config` to save it)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} must override __call__(self, step)")

    def get_config(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must override get_config()")

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _positive(name: str, steps) -> None:
    if steps <= 0:
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={steps}")


class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ^ (step / decay_steps) (floored with staircase)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        _positive("decay_steps", decay_steps)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.decay_rate, self.staircase, self.name = decay_rate, staircase, name

    def __call__(self, step: int) -> float:
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(p)
                                                                if self.staircase else p)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[i] while step <= boundaries[i], then
    values[-1]."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ValueError(f"The length of boundaries should be 1 less than the length of "
                             f"values. Received: boundaries={boundaries} of length "
                             f"{len(boundaries)}, and values={values} of length {len(values)}.")
        self.boundaries, self.values, self.name = list(boundaries), list(values), name

    def __call__(self, step: int) -> float:
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self) -> dict:
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """(initial - end) * (1 - step / decay_steps) ^ power + end; step stops at decay_steps,
    or with `cycle` decay_steps grows to the first multiple above step."""

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
                 cycle=False, name="PolynomialDecay"):
        _positive("decay_steps", decay_steps)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.end_learning_rate, self.power, self.cycle = end_learning_rate, power, cycle
        self.name = name

    def __call__(self, step: int) -> float:
        steps = self.decay_steps
        if self.cycle:
            steps *= 1.0 if step == 0 else math.ceil(step / self.decay_steps)
        else:
            step = min(step, steps)
        return ((self.initial_learning_rate - self.end_learning_rate)
                * (1 - step / steps) ** self.power + self.end_learning_rate)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "end_learning_rate": self.end_learning_rate,
                "power": self.power, "cycle": self.cycle, "name": self.name}


class InverseTimeDecay(LearningRateSchedule):
    """initial_learning_rate / (1 + decay_rate * step / decay_steps) (floored with
    staircase)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="InverseTimeDecay"):
        _positive("decay_steps", decay_steps)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.decay_rate, self.staircase, self.name = decay_rate, staircase, name

    def __call__(self, step: int) -> float:
        p = step / self.decay_steps
        return self.initial_learning_rate / (1 + self.decay_rate * (math.floor(p)
                                                                    if self.staircase else p))

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """An optional linear warmup from initial_learning_rate to warmup_target over
    warmup_steps, then a cosine decay over decay_steps down to alpha times the start."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        _positive("decay_steps", decay_steps)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.alpha, self.name = alpha, name
        self.warmup_target, self.warmup_steps = warmup_target, warmup_steps

    def _decay(self, step, start: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return start * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step: int) -> float:
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * (step / self.warmup_steps) + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay from 1 to alpha over first_decay_steps, then warm restarts: each period
    t_mul times longer, starting m_mul times lower (SGDR)."""

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0,
                 alpha=0.0, name="SGDRDecay"):
        _positive("first_decay_steps", first_decay_steps)
        self.initial_learning_rate, self.first_decay_steps = (initial_learning_rate,
                                                              first_decay_steps)
        self.t_mul, self.m_mul, self.alpha, self.name = t_mul, m_mul, alpha, name

    def _period(self, fraction: float) -> tuple[int, float]:
        """(restarts so far, fraction of the current period done)."""
        if self.t_mul == 1.0:
            restarts = math.floor(fraction)
            return restarts, fraction - restarts
        restarts = math.floor(math.log(1.0 - fraction * (1.0 - self.t_mul)) / math.log(self.t_mul))
        done = (1.0 - self.t_mul ** restarts) / (1.0 - self.t_mul)
        return restarts, (fraction - done) / self.t_mul ** restarts

    def __call__(self, step: int) -> float:
        restarts, fraction = self._period(step / self.first_decay_steps)
        cosine = 0.5 * self.m_mul ** restarts * (1.0 + math.cos(math.pi * fraction))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "first_decay_steps": self.first_decay_steps, "t_mul": self.t_mul,
                "m_mul": self.m_mul, "alpha": self.alpha, "name": self.name}


_KERAS_NAMES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay,
                                               PolynomialDecay, InverseTimeDecay, CosineDecay,
                                               CosineDecayRestarts)}


def as_schedule(learning_rate):
    """`learning_rate` as a bigtrain schedule, or None for a number.

    A Keras schedule of one of the classes above becomes its bigtrain twin (same config,
    plain Python: no Keras in the ranks); any other object with a one-argument `__call__`
    (a LearningRateSchedule subclass) is called with the step count and must return a
    number.
    """
    if learning_rate is None or isinstance(learning_rate, (int, float)):
        return None
    if isinstance(learning_rate, LearningRateSchedule):
        return learning_rate
    twin = _KERAS_NAMES.get(type(learning_rate).__name__)
    if twin is not None and type(learning_rate).__module__.startswith("keras"):
        return twin.from_config(learning_rate.get_config())
    if callable(learning_rate):
        return learning_rate
    try:
        float(learning_rate)  # a number as a 0-d tensor or array
    except (TypeError, ValueError):
        raise TypeError(f"learning_rate must be a number or a schedule "
                        f"(bigtrain.optimizers.schedules, e.g. ExponentialDecay), got "
                        f"{type(learning_rate).__name__}") from None
    return None


def rate_at(schedule, step: int) -> float:
    """The schedule's learning rate for optimizer step `step`, as a float."""
    try:
        return float(schedule(step))
    except TypeError as e:
        raise TypeError(f"the learning-rate schedule {type(schedule).__name__} could not be "
                        f"called with the step count ({e}); use one of "
                        f"bigtrain.optimizers.schedules (ExponentialDecay, CosineDecay, ...) or "
                        f"a subclass of bigtrain.optimizers.schedules.LearningRateSchedule "
                        f"whose __call__(step) returns a number") from e
