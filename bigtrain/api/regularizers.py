"""Keras's weight regularizers (`keras.regularizers`): L1, L2 and L1L2 penalties.

Keras adds the sum of every penalty to the loss. bigtrain splits that sum in two, so it is
exact under every strategy: the penalty's gradient is added to the weight's gradient in
the optimizer's step hook (bigtrain.parallel.update_rules; element-wise, so it runs on a
sharded weight's local piece, once per step whatever the ranks and micro-batches), and its
value is added, without a gradient, to the task's loss (`RegularizedTask`), so the logged
`loss` is Keras's. `WeightRules` also projects the constrained weights after each step
(bigtrain.api.constraints).

Example:
    Dense(64, kernel_regularizer=regularizers.l2(1e-4))
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from bigtrain.parallel.lazy_types import is_dtensor

from bigtrain.api.keras_objects import KerasObject, lookup, serialize  # noqa: F401
from bigtrain.engine.task import TrainTask


class Regularizer(KerasObject):
    """Base class: `reg(w)` is the penalty (a 0-dim tensor), `reg.grad(w)` its gradient.
    A subclass defines `__call__` with torch ops, as a Keras one does; `differentiable` and
    `grad` follow from it by autograd (L1L2 writes both out)."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define __call__(self, x): the penalty "
                        "of x as a 0-dim tensor, written with torch ops")

    def differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The penalty of `x` with its gradient (an activity regularizer, `layer.losses`)."""
        return self(x)

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        """d penalty / d w, by autograd through `differentiable`."""
        with torch.enable_grad():
            x = w.detach().requires_grad_(True)
            return torch.autograd.grad(self.differentiable(x), x)[0]


class L1L2(Regularizer):
    """l1 * sum(|w|) + l2 * sum(w ** 2)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        for name, value in (("l1", l1), ("l2", l2)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{type(self).__name__} {name} must be a number >= 0, "
                                 f"got {value!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, w):
        return self.differentiable(w.detach())

    def differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The penalty of `x` with its gradient (an activity regularizer, `layer.losses`)."""
        x = x.float()
        out = x.new_zeros(())
        if self.l1:
            out = out + self.l1 * x.abs().sum()
        if self.l2:
            out = out + self.l2 * x.square().sum()
        return out

    def grad(self, w):
        out = torch.zeros_like(w)
        if self.l1:
            out.add_(torch.sign(w), alpha=self.l1)  # Keras's d|w|/dw: 0 at w = 0
        if self.l2:
            out.add_(w, alpha=2.0 * self.l2)
        return out

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    """Keras's `l1_l2` function: both penalties, 0.01 each by default."""
    return L1L2(l1, l2)


l1, l2 = L1, L2  # Keras's lower-case aliases
_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": l1_l2, "l1l2": L1L2}


def get(identifier) -> Regularizer | None:
    """A Regularizer from None, a Keras name ("l2"), an instance or a config dict.

    Example:
        get("l2"); get(L1L2(l1=1e-5, l2=1e-4))
    """
    if identifier is None:
        return None
    return lookup(identifier, Regularizer, _BY_NAME, "regularizer", "give 'l1', 'l2', "
                  "'l1_l2', a bigtrain.regularizers object (L1, L2, L1L2) or its config dict")


# ---- the model's penalties and constraints in fit ----------------------------------------

def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if is_dtensor(t) else t


def _whole_sum(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A sum over a DTensor's local piece -> the sum over the whole tensor (all-reduced
    over the mesh dimensions it is sharded on)."""
    for dim, placement in enumerate(p.placements):
        if placement.is_shard():
            dist.all_reduce(value, group=p.device_mesh.get_group(dim))
    return value


@dataclass
class _Weight:
    layer: torch.nn.Module
    key: str  # the state-dict key inside the layer, e.g. "linear.weight"
    to_keras: Any  # torch layout -> Keras layout (None: the same)
    to_torch: Any
    regularizer: Regularizer | None
    constraint: Any


class WeightRules:
    """The regularized and constrained weights of a model, for the optimizer's step hooks
    (bigtrain.parallel.update_rules.UpdateRules.weights) and the task's loss.

    Each hook acts on the weights the optimizer holds (a ZeRO-1 rank's partition, a
    pipeline stage's layers) through their current parameter objects (a sharded strategy
    replaces them), so one code path serves every strategy. A penalty's gradient is
    element-wise: it is added on a sharded weight's local piece. A norm constraint reads
    the whole weight (gathered when sharded); a penalty's value, for the loss, is computed
    from the whole weight where it is at hand and, for a sharded one, after each step (its
    pieces' sums all-reduced) when every rank runs the hook.
    """

    def __init__(self, weights: list[tuple]):
        """`weights`: (layer, state key, torch->Keras, Keras->torch, WeightOptions) of each
        regularized or constrained weight (bigtrain.api.layers.base.weight_rules_of)."""
        self.weights = [_Weight(layer, key, to_keras, to_torch, opts.regularizer,
                                opts.constraint)
                        for layer, key, to_keras, to_torch, opts in weights]
        self._sharded_penalty: dict[int, torch.Tensor] = {}  # index -> value, DTensors

    def __bool__(self):
        return bool(self.weights)

    def _held(self, params) -> list[tuple[int, _Weight, torch.Tensor]]:
        ids = {id(p) for p in params}
        found = [(i, w, w.layer.get_parameter(w.key)) for i, w in enumerate(self.weights)]
        return [(i, w, p) for i, w, p in found if id(p) in ids]

    @torch.no_grad()
    def add_penalty_grads(self, params) -> None:
        """Before the step: each penalty's gradient into its weight's gradient."""
        for _, w, p in self._held(params):
            if w.regularizer is None:
                continue
            if p.grad is None:  # a weight the loss does not read still has its penalty
                p.grad = torch.zeros_like(p)
            _local(p.grad).add_(w.regularizer.grad(_local(p)))

    @torch.no_grad()
    def after_step(self, params, project: bool = True) -> None:
        """After the step: project the constrained weights (`project`), then note the
        penalties of the sharded ones (the next loss reads them)."""
        held = self._held(params)
        if project:
            for _, w, p in held:
                if w.constraint is not None:
                    _project(p, w)
        for i, w, p in held:
            if w.regularizer is not None and is_dtensor(p):
                self._sharded_penalty[i] = _whole_sum(w.regularizer(_local(p)), p)

    @torch.no_grad()
    def penalty(self, device) -> torch.Tensor:
        """The sum of every penalty at the current weights (0-dim float32 on `device`)."""
        total = torch.zeros((), device=device)
        for i, w in enumerate(self.weights):
            if w.regularizer is None:
                continue
            p = w.layer.get_parameter(w.key)
            value = self._sharded_penalty.get(i) if is_dtensor(p) else w.regularizer(p)
            if value is None:
                raise RuntimeError(f"the penalty of sharded weight {w.key!r} was not computed "
                                   "by the optimizer's hooks (is it in the optimizer?)")
            total += value.to(device)
        return total


def _project(p: torch.Tensor, w: _Weight) -> None:
    """`p` := constraint(p), computed in Keras's layout of the weight."""
    c = w.constraint
    if is_dtensor(p) and not c.reads_norms:  # element-wise: on the local piece
        _local(p).copy_(c(_local(p)))
        return
    whole = p.full_tensor() if is_dtensor(p) else p
    keras = whole if w.to_keras is None else w.to_keras(whole)
    new = c(keras)
    new = new if w.to_torch is None else w.to_torch(new)
    if is_dtensor(p):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        shape, offset = compute_local_shape_and_global_offset(new.shape, p.device_mesh,
                                                              p.placements)
        new = new[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
    _local(p).copy_(new)


# ---- losses the layers add in the forward pass (add_loss, activity_regularizer) ----------

#: the attribute (in a module's __dict__) holding the losses its last call added
ADDED_LOSSES = "_added_losses"


class _Added(threading.local):
    #: a layer of this thread has added a loss; until then no step walks the modules
    any = False


#: per thread: whether a layer ever added a loss (GraphModule.forward reads it inline)
ADDED = _Added()


def keep_added(module: torch.nn.Module, losses: list) -> None:
    """Keep `losses` on `module` until its next outermost call (add_loss)."""
    module.__dict__.setdefault(ADDED_LOSSES, []).extend(losses)
    ADDED.any = True


def added_losses(module: torch.nn.Module) -> list[torch.Tensor]:
    """The losses every layer in `module` added in its latest call (Keras's `model.losses`
    without the weight penalties), in module order."""
    if not ADDED.any:
        return []
    return [loss for m in module.modules() for loss in m.__dict__.get(ADDED_LOSSES, ())]


@dataclass
class LayerLossTask(TrainTask):
    """A TrainTask whose loss adds, with their gradient, the losses the layers added in the
    step's forward (`add_loss`, `activity_regularizer`), as Keras's train and test steps
    add `model.losses` (each summed to a number). On ranks or micro-batches that split the
    batch, each share adds its own, weighed as its share of the batch like its loss: exact
    for a term that is a mean over the batch (an activity regularizer, which Keras divides
    by the batch size) or that does not read the batch."""
    adds_losses: bool = False  # a layer may add losses (refuses pipeline/parameter servers)
    activity: bool = False  # a layer has an activity_regularizer (refuses tensor too)

    def compute_loss(self, outputs, targets, sample_weight):
        losses = self.losses
        if len(losses) == 1 and self.loss_weights[0] == 1.0:  # TrainTask's, without a frame
            loss = losses[0](targets, outputs, sample_weight)
        else:
            loss = TrainTask.compute_loss(self, outputs, targets, sample_weight)
        if ADDED.any:  # else no layer of this thread ever added one: no walk over the modules
            for extra in added_losses(self.module):
                loss = loss + extra.sum().to(loss.dtype)
        return loss

    def strategy_refusal(self, strategy) -> str | None:
        return why_refused(strategy, False, self.adds_losses, self.activity)


@dataclass
class RegularizedTask(LayerLossTask):
    """A TrainTask whose loss adds the model's penalties, as Keras's does: their value only
    (the gradient is added in the optimizer's step hook, once per step)."""
    weight_rules: WeightRules | None = None

    def compute_loss(self, outputs, targets, sample_weight):
        loss = super().compute_loss(outputs, targets, sample_weight)
        return loss + self.weight_rules.penalty(loss.device).to(loss.dtype)

    def strategy_refusal(self, strategy) -> str | None:
        return why_refused(strategy, True, self.adds_losses, self.activity)


def why_refused(strat, weights: bool = True, adds_losses: bool = False,
                activity: bool = False) -> str | None:
    """Why the penalties' value or gradient (`weights`), the losses layers add in the
    forward (`adds_losses`) or an activity regularizer (`activity`) would not be Keras's
    under Strategy `strat`."""
    if adds_losses and strat.owns_step:
        return (f"add_loss and activity_regularizer are not supported under strategy "
                f"{strat.name!r}: its loss is computed on one pipeline stage (or on "
                "servers), which does not see the losses the other layers add in the "
                "forward; use ddp, zero1/zero2/zero3, fsdp or tensor")
    if activity and strat.name == "tensor_parallel":
        return ("activity_regularizer is not supported under strategy 'tensor_parallel': a "
                "split layer's output is split over the ranks too, so each rank's penalty "
                "would read only its part of it; use ddp, zero1/zero2/zero3 or fsdp")
    if not weights:
        return None
    if strat.owns_step:
        return (f"kernel/bias/embeddings regularizers and constraints are not supported "
                f"under strategy {strat.name!r}: its loss is computed on one pipeline stage "
                "(or on servers), which does not hold every regularized weight; use ddp, "
                "zero1/zero2/zero3 or tensor")
    if strat.name == "ddp_cpu_optimizer" or getattr(strat, "optimizer_device", None) == "cpu":
        return ("kernel/bias/embeddings regularizers and constraints are not supported under "
                f"strategy {strat.name!r} with its optimizer on the host (it steps host "
                "copies of the weights, which the penalties and constraints do not reach); "
                "use ddp, zero1 or fsdp_offload")
    return None


def refuse_strategy(strategy, weights: bool = True, adds_losses: bool = False,
                    activity: bool = False) -> None:
    """Refuse, before any process starts, a strategy under which the penalties' value or
    gradient (`weights`), or the losses the layers add (`adds_losses`, `activity`), would
    not be Keras's ("auto" leaves those out: `strategy_refusal`)."""
    from bigtrain.parallel.base import resolve_strategy
    if strategy == "auto" or strategy is None:
        return
    reason = why_refused(resolve_strategy(strategy), weights, adds_losses, activity)
    if reason:
        raise ValueError(reason)
