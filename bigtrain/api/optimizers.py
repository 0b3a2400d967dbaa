"""Optimizers by Keras name, with Keras's defaults, built as torch optimizers.

Strategies create the optimizer only after they have wrapped or sharded the model, so
compile keeps an `OptimizerSpec` (a factory) rather than an optimizer. Where torch has a
fused CPU kernel (Adam, AdamW, SGD), it is used: 3-6x faster optimizer steps on CPU.

The Keras names compute what Keras 3 computes: Adam and AdamW run torch's kernels with
Keras's epsilon; RMSprop, Adagrad, Lion, Ftrl and Lamb Keras's own formulas
(bigtrain.api.optimizer_kernels). A torch
optimizer class or instance passed in keeps torch's rule.

Every optimizer a spec builds also answers Keras's `optimizer.learning_rate` (read, set,
`.assign`), acting on all its param groups, and `optimizer.iterations` (the steps taken),
and follows a learning-rate schedule (bigtrain.optimizers.schedules) given as
`learning_rate`, one value per optimizer step (bigtrain.api.keras_optimizer).
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import torch

from bigtrain.api import optimizer_kernels as keras_rules
from bigtrain.api.optimizer_kernels import kernel_options
from bigtrain.api.keras_optimizer import Iterations, LearningRate, keras_class, not_settable
from bigtrain.api.optimizer_decay import exclude
from bigtrain.api.param_groups import grouped, instance_groups
from bigtrain.api.schedules import as_schedule, rate_at
from bigtrain.api.sparse_grads import watch_sparse_grads
from bigtrain.parallel.update_rules import UpdateRules

# Keras names -> (optimizer class, Keras defaults translated to torch arguments)
_OPTIMIZERS = {
    "adam": (keras_rules.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}),
    "adamw": (keras_rules.AdamW, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7,
                                 "weight_decay": 0.004}),
    "sgd": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.0}),
    "rmsprop": (keras_rules.RMSprop, {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}),
    "adagrad": (keras_rules.Adagrad, {"lr": 1e-3, "initial_accumulator_value": 0.1,
                                      "eps": 1e-7}),
    # torch's rule is Keras's for these (Adamax adds epsilon a step apart: a relative 1e-6
    # where the accumulators are far above epsilon, as they are from step 1)
    "adadelta": (torch.optim.Adadelta, {"lr": 1e-3, "rho": 0.95, "eps": 1e-7}),
    "adamax": (torch.optim.Adamax, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}),
    # Keras's momentum schedule is b1 (1 - 0.5 * 0.96^t): torch's 0.96^(t * decay), decay 1
    "nadam": (torch.optim.NAdam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7,
                                  "momentum_decay": 1.0}),
    # Keras's own rules, which torch lacks (bigtrain.api.optimizer_kernels)
    "lion": (keras_rules.Lion, {"lr": 1e-3, "betas": (0.9, 0.99)}),
    "ftrl": (keras_rules.Ftrl, {"lr": 1e-3, "lr_power": -0.5, "initial_accumulator_value": 0.1,
                                "l1": 0.0, "l2": 0.0, "l2_shrinkage": 0.0, "beta": 0.0}),
    "lamb": (keras_rules.Lamb, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}),
}
#: Keras 3 optimizers bigtrain does not offer (named in the error, so users know why)
_NOT_OFFERED = ("adafactor", "muon", "schedulefreeadamw")
#: Keras arguments bigtrain's optimizers refuse, and why
_REFUSED = {
    # Keras multiplies the loss by it and divides the gradients by it again: the update is
    # the same, so scaling the loss oneself would change training, not reproduce it
    "loss_scale_factor": "it does not change Keras's update (the gradients are unscaled "
                         "again); drop it: fit(precision='16-mixed') scales float16 losses "
                         "itself",
    "gradient_accumulation_steps": "fit(batch_size=k * b, accumulate_steps=k) computes the "
                                   "same averaged gradient of k batches of b rows per update, "
                                   "with the memory of one batch of b"}


def _refuse(cls_name: str, extra: dict) -> None:
    """A clear error for Keras arguments bigtrain's optimizers do not take (`name` is
    accepted and ignored, as it only labels Keras's variables)."""
    extra = {k: v for k, v in extra.items() if k != "name"}
    if not extra:
        return
    reasons = "; ".join(f"{k}: {_REFUSED[k]}" for k in extra if k in _REFUSED and extra[k])
    unknown = sorted(k for k in extra if k not in _REFUSED)
    if unknown:
        raise TypeError(f"{cls_name} got unexpected arguments {unknown}")
    if reasons:
        raise ValueError(f"{cls_name}: bigtrain does not support {reasons}")


@dataclass
class OptimizerSpec:
    """How to build the torch optimizer: a class and its keyword arguments.

    Attributes:
        cls: a torch.optim.Optimizer subclass.
        kwargs: constructor arguments except the parameters.
        name: Keras-style name for summaries and the run record.
        rules: Keras's clipping, weight decay and weight averaging around the update
            (hooked into every optimizer `build` makes), or None.
        groups: a torch optimizer instance's own param groups, or None (one group of every
            trainable parameter): [{"index": positions in the model's `parameters()`,
            "count": how many the model has, **that group's settings}].
        start_step: the step count (`iterations`, and a learning-rate schedule's step)
            the optimizers it builds start from: the steps of fits under this compile
            whose optimizer did not carry (several processes), so that the next fit
            continues counting, and the schedule, as Keras's `iterations` does.
    """
    cls: type
    kwargs: dict = field(default_factory=dict)
    name: str = ""
    rules: UpdateRules | None = None
    groups: list | None = None
    start_step: int = 0

    def __post_init__(self):
        schedule = as_schedule(self.kwargs.get("lr"))  # a Keras schedule: its bigtrain twin
        if schedule is not None:
            self.kwargs["lr"] = schedule

    def build(self, params) -> torch.optim.Optimizer:
        if self.groups is not None:
            params = self._grouped(list(params))
        elif not isinstance(params, list):
            params = [p for p in params if p.requires_grad]
        if not params:  # a model frozen whole: Keras warns and trains nothing
            warnings.warn("The model does not have any trainable weights.", UserWarning,
                          stacklevel=2)
            params = [torch.nn.Parameter(torch.zeros(()), requires_grad=False)]  # never steps
        kwargs = dict(self.kwargs)
        schedule = self.schedule
        if schedule is not None:  # the first step's rate, until the step hook sets each
            kwargs["lr"] = rate_at(schedule, self.start_step)
        cls = keras_class(self.cls, schedule)
        if cls is not self.cls:  # a class that counts its steps (not one of _EXACT)
            kwargs["iterations"] = self.start_step
        flat = [p for g in params for p in g["params"]] if self.groups is not None else params
        kwargs.update(kernel_options(self.cls, flat, kwargs))  # fused only on plain tensors
        try:
            optimizer = cls(params, **kwargs)
        except (RuntimeError, TypeError):
            kwargs.pop("fused", None)  # e.g. DTensor parameters or an unsupported dtype
            optimizer = cls(params, **kwargs)
        active = self.rules is not None and self.rules.active
        watch_sparse_grads(optimizer, active)  # before the rules' hooks: they read dense grads
        if active:
            self.rules.attach(optimizer)
        return optimizer

    def _grouped(self, params: list) -> list[dict]:
        return grouped(self.groups, self.cls.__name__, params)

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Keras's: `weight_decay` skips the weights in `var_list` (the model's weights, as
        `model.weights` or `layer.weights` list them, or torch parameters) and every weight
        whose name contains a match of one of `var_names` (`["bias"]`: every bias).
        Call it before compile. A later call replaces the earlier one, as in Keras."""
        exclude(self, var_list, var_names)

    @property
    def fused(self) -> bool:
        return "fused" in inspect.signature(self.cls).parameters and self.kwargs.get("fused", True)

    @property
    def schedule(self):
        """The learning-rate schedule given as learning_rate, or None."""
        lr = self.kwargs.get("lr")
        return lr if callable(lr) else None

    @property
    def learning_rate(self) -> LearningRate:
        """Keras's `model.optimizer.learning_rate` before the first fit: the rate it starts
        with (a schedule's at `start_step`), settable (not with a schedule) until then."""
        if self.schedule is not None:
            return LearningRate(rate_at(self.schedule, self.start_step), self)
        return LearningRate(float(self.kwargs.get("lr", 0.0)), self)

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        if self.schedule is not None:
            raise not_settable(self)
        self.kwargs["lr"] = float(value)

    @property
    def iterations(self) -> Iterations:
        """Keras's `model.optimizer.iterations` before the first fit: 0 after compile (or
        the steps of earlier fits whose optimizer state stayed with their ranks)."""
        return Iterations(self.start_step, self)

    @iterations.setter
    def iterations(self, value) -> None:
        self.start_step = int(value)


def _rules(**keras_args) -> UpdateRules | None:
    rules = UpdateRules(**keras_args)
    return rules if rules.active else None


# Every optimizer below also takes Keras's common arguments (bigtrain.parallel.update_rules):
#   weight_decay (decoupled: w -= lr * wd * w before the update), clipnorm (per variable),
#   global_clipnorm, clipvalue, use_ema, ema_momentum, ema_overwrite_frequency.

class Adam(OptimizerSpec):
    """`bigtrain.optimizers.Adam(learning_rate=1e-3, clipnorm=1.0)` as in Keras."""

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, *, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, **keras_only):
        _refuse("Adam", keras_only)
        super().__init__(keras_rules.Adam, {"lr": learning_rate, "betas": (beta_1, beta_2),
                                            "eps": epsilon, "amsgrad": bool(amsgrad)}, "adam",
                         _rules(weight_decay=weight_decay, clipnorm=clipnorm,
                                clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                                use_ema=use_ema, ema_momentum=ema_momentum,
                                ema_overwrite_frequency=ema_overwrite_frequency))


class AdamW(OptimizerSpec):
    """Keras's AdamW: torch's AdamW decays the weights as Keras does (w -= lr * wd * w
    before the Adam update), so weight_decay goes to torch."""

    def __init__(self, learning_rate=1e-3, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, *, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, **keras_only):
        _refuse("AdamW", keras_only)
        super().__init__(keras_rules.AdamW, {"lr": learning_rate, "betas": (beta_1, beta_2),
                                             "eps": epsilon, "weight_decay": weight_decay,
                                             "amsgrad": bool(amsgrad)},
                         "adamw",
                         _rules(clipnorm=clipnorm, clipvalue=clipvalue,
                                global_clipnorm=global_clipnorm, use_ema=use_ema,
                                ema_momentum=ema_momentum,
                                ema_overwrite_frequency=ema_overwrite_frequency))


class SGD(OptimizerSpec):
    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, *,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, **keras_only):
        _refuse("SGD", keras_only)
        # Keras's momentum keeps lr inside it: a rule of its own when momentum is on
        cls = keras_rules.SGD if momentum else torch.optim.SGD
        super().__init__(cls, {"lr": learning_rate, "momentum": momentum,
                               "nesterov": nesterov}, "sgd",
                         _rules(weight_decay=weight_decay, clipnorm=clipnorm,
                                clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                                use_ema=use_ema, ema_momentum=ema_momentum,
                                ema_overwrite_frequency=ema_overwrite_frequency))


class RMSprop(OptimizerSpec):
    """`bigtrain.optimizers.RMSprop(learning_rate=1e-3, momentum=0.5)`: Keras 3's update,
    lr * g / sqrt(v + epsilon), not torch's lr * g / (sqrt(v) + eps)."""

    def __init__(self, learning_rate=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, *, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, **keras_only):
        _refuse("RMSprop", keras_only)
        super().__init__(keras_rules.RMSprop, {"lr": learning_rate, "alpha": rho,
                                               "momentum": momentum, "eps": epsilon,
                                               "centered": centered}, "rmsprop",
                         _rules(weight_decay=weight_decay, clipnorm=clipnorm,
                                clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                                use_ema=use_ema, ema_momentum=ema_momentum,
                                ema_overwrite_frequency=ema_overwrite_frequency))


def _keras_like(name: str, doc: str, arguments: dict[str, str]):
    """A Keras-style optimizer class for `name` of `_OPTIMIZERS`: Keras's argument names
    (`arguments`: Keras name -> torch name, beta_1/beta_2 going to betas), Keras's
    defaults, and Keras's common arguments (clipnorm, weight_decay, EMA, ...)."""
    cls, defaults = _OPTIMIZERS[name]
    common = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
              "ema_momentum", "ema_overwrite_frequency")

    def __init__(self, learning_rate=defaults["lr"], **kwargs):
        _refuse(type(self).__name__, {k: kwargs.pop(k) for k in (*_REFUSED, "name")
                                      if k in kwargs})
        unknown = set(kwargs) - set(arguments) - set(common) - {"beta_1", "beta_2"}
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(unknown)}; "
                            f"it takes learning_rate, {', '.join(arguments)} and {', '.join(common)}")
        torch_args = dict(defaults, lr=learning_rate)
        if "beta_1" in kwargs or "beta_2" in kwargs:
            b1, b2 = torch_args["betas"]
            torch_args["betas"] = (kwargs.pop("beta_1", b1), kwargs.pop("beta_2", b2))
        for keras_name, torch_name in arguments.items():
            if keras_name in kwargs:
                torch_args[torch_name] = kwargs.pop(keras_name)
        OptimizerSpec.__init__(self, cls, torch_args, name, _rules(**kwargs))

    return type(name.capitalize(), (OptimizerSpec,),
                {"__init__": __init__, "__doc__": doc})


Adagrad = _keras_like("adagrad", "`bigtrain.optimizers.Adagrad(learning_rate=1e-3, "
                      "initial_accumulator_value=0.1, epsilon=1e-7)` as in Keras.",
                      {"initial_accumulator_value": "initial_accumulator_value",
                       "epsilon": "eps"})
Adadelta = _keras_like("adadelta", "`bigtrain.optimizers.Adadelta(learning_rate=1e-3, "
                       "rho=0.95, epsilon=1e-7)` as in Keras.", {"rho": "rho", "epsilon": "eps"})
Adamax = _keras_like("adamax", "`bigtrain.optimizers.Adamax(learning_rate=1e-3, beta_1=0.9, "
                     "beta_2=0.999, epsilon=1e-7)` as in Keras.", {"epsilon": "eps"})
Lion = _keras_like("lion", "`bigtrain.optimizers.Lion(learning_rate=1e-3, beta_1=0.9, "
                   "beta_2=0.99)` as in Keras.", {})
Ftrl = _keras_like("ftrl", "`bigtrain.optimizers.Ftrl(learning_rate=1e-3, "
                   "learning_rate_power=-0.5, initial_accumulator_value=0.1, "
                   "l1_regularization_strength=0.0, l2_regularization_strength=0.0, "
                   "l2_shrinkage_regularization_strength=0.0, beta=0.0)` as in Keras.",
                   {"learning_rate_power": "lr_power",
                    "initial_accumulator_value": "initial_accumulator_value",
                    "l1_regularization_strength": "l1", "l2_regularization_strength": "l2",
                    "l2_shrinkage_regularization_strength": "l2_shrinkage", "beta": "beta"})
Lamb = _keras_like("lamb", "`bigtrain.optimizers.Lamb(learning_rate=1e-3, beta_1=0.9, "
                   "beta_2=0.999, epsilon=1e-7)` as in Keras.", {"epsilon": "eps"})
Nadam = _keras_like("nadam", "`bigtrain.optimizers.Nadam(learning_rate=1e-3, beta_1=0.9, "
                    "beta_2=0.999, epsilon=1e-7)` as in Keras.", {"epsilon": "eps"})


def get_optimizer(optimizer, learning_rate: float | None = None,
                  params: list | None = None) -> OptimizerSpec:
    """An OptimizerSpec from a Keras name, a spec, a torch optimizer class or instance.

    Example:
        get_optimizer("adam", learning_rate=3e-4)
        get_optimizer(torch.optim.SGD)            # with torch's defaults (lr must be given)

    `params`: the model's parameters, to keep a torch optimizer instance's own param groups
    (or the part of the model it covers: a head fine-tuned alone).
    """
    if isinstance(optimizer, OptimizerSpec):
        spec = OptimizerSpec(optimizer.cls, dict(optimizer.kwargs), optimizer.name,
                             optimizer.rules, optimizer.groups)
    elif isinstance(optimizer, str) and optimizer.lower() in _OPTIMIZERS:
        cls, defaults = _OPTIMIZERS[optimizer.lower()]
        spec = OptimizerSpec(cls, dict(defaults), optimizer.lower())
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        spec = OptimizerSpec(optimizer, {}, optimizer.__name__.lower())
    elif isinstance(optimizer, torch.optim.Optimizer):
        defaults = {k: v for k, v in optimizer.defaults.items()
                    if k in inspect.signature(type(optimizer)).parameters}
        spec = OptimizerSpec(type(optimizer), defaults, type(optimizer).__name__.lower(),
                             groups=instance_groups(optimizer, params))
    else:
        not_offered = isinstance(optimizer, str) and optimizer.lower() in _NOT_OFFERED
        raise ValueError(f"{'Keras optimizer' if not_offered else 'unknown optimizer'} "
                         f"{optimizer!r}{' is not offered by bigtrain' if not_offered else ''}"
                         f"; valid names: {', '.join(sorted(_OPTIMIZERS))}, a "
                         "bigtrain.optimizers object, or a torch.optim.Optimizer class or "
                         "instance")
    if learning_rate is not None:
        spec.kwargs["lr"] = as_schedule(learning_rate) or float(learning_rate)
    if spec.cls is torch.optim.SGD and "lr" not in spec.kwargs:
        spec.kwargs["lr"] = 0.01
    return spec
