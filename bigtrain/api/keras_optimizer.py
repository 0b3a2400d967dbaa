"""What every torch optimizer an `OptimizerSpec` builds answers as a Keras optimizer:
`learning_rate` (read, set, `.assign`, on every param group), `iterations` (the optimizer
steps taken) and a learning-rate schedule's step. The class keeps the torch optimizer's name
and state_dict; the step count lives in its param groups ("iterations"), so that it
carries over with the state (to the next fit, into checkpoints and saved models, from
ranks back to the caller).

Example:
    cls = keras_class(torch.optim.SGD)           # SGD answering learning_rate, iterations
    opt = cls(params, lr=0.1)
    opt.step(); int(opt.iterations)              # 1
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from bigtrain.api.schedules import rate_at
from bigtrain.engine.callbacks._util import get_lrs, set_lrs


class LearningRate(float):
    """What `optimizer.learning_rate` reads: the rate as a float that, like the Keras
    variable it stands for, `assign`s a new value to the optimizer it was read from."""

    def __new__(cls, value: float, owner):
        rate = super().__new__(cls, value)
        rate.owner = owner
        return rate

    def assign(self, value) -> None:
        self.owner.learning_rate = value

    def numpy(self) -> float:
        return float(self)


class Iterations(int):
    """What `optimizer.iterations` reads: the optimizer steps taken, as an int that, like
    the Keras variable it stands for, has `numpy()` and `assign`s a new count to the
    optimizer it was read from (a schedule then continues from that step).

    Example:
        step = int(model.optimizer.iterations)
    """

    def __new__(cls, value: int, owner):
        count = super().__new__(cls, value)
        count.owner = owner
        return count

    def assign(self, value) -> None:
        self.owner.iterations = value

    def numpy(self) -> np.ndarray:
        return np.asarray(int(self), dtype=np.int32)  # Keras 3 counts in an int32 variable


def not_settable(owner) -> TypeError:
    return TypeError(f"this optimizer was created with a learning-rate schedule "
                     f"({type(owner.schedule).__name__}) as its learning_rate, hence its "
                     "learning rate is not settable; create it with a float learning_rate "
                     "to set it (as in Keras)")


class KerasLearningRate:
    """Mixed into each torch optimizer class a spec builds (same name, same state_dict):
    Keras's `learning_rate`, on every param group, and `iterations`, the steps taken,
    counted by a step pre-hook into the groups' "iterations" so that it carries over with
    the optimizer state. With a `schedule` (a class attribute of the scheduled variant)
    the hook first sets each step's rate from that count."""

    schedule = None

    @property
    def learning_rate(self) -> LearningRate:
        if self.schedule is not None:  # Keras: the rate of the next step
            return LearningRate(rate_at(self.schedule, _iterations(self)), self)
        return LearningRate(get_lrs(self)[0], self)

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        if self.schedule is not None:
            raise not_settable(self)
        set_lrs(self, [float(value)] * len(self.param_groups))

    @property
    def iterations(self) -> Iterations:
        """Keras's `optimizer.iterations`: the optimizer steps taken (under the model's
        compile, across fit and train_on_batch calls)."""
        return Iterations(_iterations(self), self)

    @iterations.setter
    def iterations(self, value) -> None:
        for group in self.param_groups:
            group["iterations"] = int(value)


def _iterations(optimizer) -> int:
    return int(optimizer.param_groups[0].get("iterations", 0))


def _counted_step(optimizer, args, kwargs) -> None:
    """Step pre-hook: with a schedule, this step's rate from it; then count the step (it
    runs before every other pre-hook, so weight decay and SGD's momentum see this step's
    rate)."""
    groups = optimizer.param_groups
    step = int(groups[0].get("iterations", 0))  # _iterations, written out: every step
    if optimizer.schedule is not None:
        set_lrs(optimizer, [rate_at(optimizer.schedule, step)] * len(groups))
    for group in groups:
        group["iterations"] = step + 1


def _init_counted(base: type):
    def __init__(self, params, *args, iterations: int = 0, **kwargs):
        base.__init__(self, params, *args, **kwargs)
        self.defaults["iterations"] = iterations  # read back as an argument (ZeRO-1)
        for group in self.param_groups:
            group.setdefault("iterations", iterations)
        handle = self.register_step_pre_hook(_counted_step)
        # first of all pre-hooks: the base's own (SGD's momentum rescale) read this rate
        self._optimizer_step_pre_hooks.move_to_end(handle.id, last=False)
    # the base's signature and the step count to start from, for code that reads the
    # constructor's arguments (ZeRO-1 builds its local optimizer from them)
    __init__.__signature__ = _with_iterations(inspect.signature(base.__init__))
    return __init__


def _with_iterations(signature: inspect.Signature) -> inspect.Signature:
    """`signature` with a keyword-only `iterations=0`, before any **kwargs."""
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    extra = inspect.Parameter("iterations", inspect.Parameter.KEYWORD_ONLY, default=0)
    return signature.replace(parameters=[*params[:at], extra, *params[at:]])


#: torch classes that stay as they are: zero3 swaps torch's exact Rprop for a DTensor-safe one
_EXACT = (torch.optim.Rprop,)
_classes: dict = {}


def keras_class(cls: type, schedule=None) -> type:
    """`cls` with Keras's learning_rate and iterations (and `schedule`), one class per pair
    so that two fits of a compile build optimizers of the same class."""
    if issubclass(cls, KerasLearningRate):  # the class of an optimizer a spec built
        schedule = schedule if schedule is not None else cls.schedule
        cls = next(c for c in cls.__mro__ if not issubclass(c, KerasLearningRate))
    if cls in _EXACT:
        if schedule is not None:
            raise ValueError(f"{cls.__name__} does not take a learning-rate schedule in "
                             "bigtrain; give it a float learning_rate")
        return cls
    key = (cls, schedule)
    if key not in _classes:
        body = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__, "__init__": _init_counted(cls)}
        if schedule is not None:
            body["schedule"] = schedule
        _classes[key] = type(cls.__name__, (KerasLearningRate, cls), body)
    return _classes[key]
