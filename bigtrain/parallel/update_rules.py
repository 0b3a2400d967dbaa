"""Keras's optimizer arguments that act around the torch optimizer's own update: gradient
clipping (`clipnorm`, `global_clipnorm`, `clipvalue`), decoupled weight decay and the
moving average of the weights (`use_ema`); and the model's weight penalties and
constraints (`kernel_regularizer`, `kernel_constraint`: `weights`). They run as step hooks
on the torch optimizer, in Keras's order: add the penalties' gradients, clip the
gradients, decay the weights, update, average, then project the constrained weights.

Exact under sharding: a gradient that is a DTensor shard (FSDP2, tensor parallel) has its
norm summed over the mesh dimensions it is sharded on, so `global_clipnorm` sees the norm of
the whole model and `clipnorm` the norm of each whole variable, as one process does.

    rules = UpdateRules(global_clipnorm=1.0)
    rules.attach(torch.optim.SGD(model.parameters(), lr=0.1))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from bigtrain.parallel.lazy_types import is_dtensor, is_zero_optimizer, loaded_instance

_ATTR = "_bigtrain_update_rules"  # the rules an optimizer was built with (see rules_of)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `t` (a DTensor's local shard, else `t`), writable in place."""
    return t._local_tensor if is_dtensor(t) else t  # to_local() under no_grad


def _all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    """Sum `t` over `group`; an NCCL group reduces a host tensor (gradients offloaded to
    the CPU) on this rank's GPU and hands it back on the host."""
    if t.device.type == "cpu" and dist.get_backend(group) == "nccl":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, group=group)
        return on_gpu.to(t.device)
    dist.all_reduce(t, group=group)
    return t


def full_sq_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Squared L2 norm of each WHOLE gradient (0-dim float32 tensors), where some are
    DTensor shards: local sums of squares, all-reduced over every mesh dimension a
    gradient is sharded on (one all-reduce per mesh and placement, not per gradient).
    Every rank must call it with the same list structure."""
    groups: dict = {}
    for i, g in enumerate(grads):
        key = (id(g.device_mesh), tuple(g.placements)) if is_dtensor(g) else None
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(grads)
    for key, idx in groups.items():
        sq = torch.stack([_local(grads[i]).detach().float().pow(2).sum() for i in idx])
        if key is not None:
            mesh, placements = grads[idx[0]].device_mesh, key[1]
            for dim, placement in enumerate(placements):
                if placement.is_partial():
                    raise RuntimeError("gradient clipping got a gradient with a pending "
                                       "reduction (Partial placement); reduce it first")
                if placement.is_shard():
                    sq = _all_reduce_sum(sq, mesh.get_group(dim))
        for j, i in enumerate(idx):
            out[i] = sq[j]
    return out


@dataclass(frozen=True)
class UpdateRules:
    """Keras's optimizer arguments beyond the update itself.

    Attributes:
        clipnorm: scale each variable's gradient to L2 norm <= clipnorm (Keras 3: per
            variable, g * c / max(|g|, c)).
        global_clipnorm: scale all gradients together to global L2 norm <= global_clipnorm.
        clipvalue: clamp each gradient element to [-clipvalue, clipvalue].
        weight_decay: decoupled decay before the update: w -= lr * weight_decay * w.
        use_ema: keep an exponential moving average of the weights; at the end of fit (or
            every ema_overwrite_frequency steps) the weights are replaced by it.
        ema_momentum: the average's momentum (first step: the weights themselves).
        ema_overwrite_frequency: steps between overwrites (None: only at the end of fit).
        weights: the model's weight penalties and constraints, or None: an object with
            `add_penalty_grads(params)` (before the step: each penalty's gradient added to
            its weight's) and `after_step(params)` (constraints), each given the
            optimizer's parameters and acting on those it regularizes or constrains
            (bigtrain.api.regularizers.WeightRules).
    """
    clipnorm: float | None = None
    global_clipnorm: float | None = None
    clipvalue: float | None = None
    weight_decay: float | None = None
    use_ema: bool = False
    ema_momentum: float = 0.99
    ema_overwrite_frequency: int | None = None
    weights: Any = None

    def __post_init__(self):
        clips = [n for n in ("clipnorm", "global_clipnorm", "clipvalue") if getattr(self, n)]
        if len(clips) > 1:
            raise ValueError(f"only one of clipnorm, clipvalue and global_clipnorm can be set "
                             f"(as in Keras); got {', '.join(clips)}")
        for name in ("clipnorm", "global_clipnorm", "clipvalue", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0 or None, got {value!r}")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1], got {self.ema_momentum!r}")
        freq = self.ema_overwrite_frequency
        if freq is not None and (not isinstance(freq, int) or freq < 1):
            raise ValueError(f"ema_overwrite_frequency must be an integer >= 1 or None, "
                             f"got {freq!r}")

    @property
    def clips(self) -> bool:
        return bool(self.clipnorm or self.global_clipnorm or self.clipvalue)

    @property
    def active(self) -> bool:
        return self.clips or bool(self.weight_decay) or self.use_ema or self.weights is not None

    def attach(self, optimizer: torch.optim.Optimizer, norm_params=None) -> None:
        """Hook these rules into `optimizer` (before and after each `step`).

        Args:
            optimizer: a torch optimizer over plain or DTensor parameters.
            norm_params: the parameters whose gradients make up the global norm, when the
                optimizer holds only some of them but every rank has all the gradients
                (ZeRO-1); None: the optimizer's own parameters.
        """
        setattr(optimizer, _ATTR, self)
        if self.clips or self.weight_decay or self.weights is not None:
            optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: self.before_step(opt, norm_params))
        if self.use_ema:
            ema = EmaState(self)
            optimizer.register_step_post_hook(lambda opt, args, kwargs: ema.update(opt))
            optimizer._bigtrain_ema = ema
        if self.weights is not None:  # after the average, as Keras
            self.weights.after_step(_params(optimizer), project=False)  # the first values
            optimizer.register_step_post_hook(
                lambda opt, args, kwargs: self.weights.after_step(_params(opt)))

    @torch.no_grad()
    def before_step(self, optimizer, norm_params=None) -> None:
        if self.weights is not None:  # part of the gradient, as in Keras's loss
            self.weights.add_penalty_grads(_params(optimizer))
        groups = [(g, [p for p in g["params"] if p.grad is not None])
                  for g in optimizer.param_groups]
        grads = [p.grad for _, ps in groups for p in ps]
        if self.clipvalue:
            for g in grads:
                _local(g).clamp_(-self.clipvalue, self.clipvalue)
        elif self.clipnorm:
            for g, sq in zip(grads, full_sq_norms(grads)):
                _local(g).mul_(self.clipnorm / torch.clamp(sq.sqrt(), min=self.clipnorm)
                               .to(_local(g).device))
        elif self.global_clipnorm and grads:
            source = grads if norm_params is None else \
                [p.grad for p in norm_params if p.grad is not None]
            squares = full_sq_norms(source)
            total = torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()
            # Keras: g * c / max(|g|, c); a non-finite norm makes every gradient NaN
            scale = self.global_clipnorm / torch.clamp(total, min=self.global_clipnorm) + \
                (total - total)
            for g in grads:
                _local(g).mul_(scale.to(_local(g).device))
        if self.weight_decay:
            for group, params in groups:
                lr = group["lr"]
                for p in params:
                    _local(p).mul_(1.0 - float(lr) * self.weight_decay)


def _params(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class EmaState:
    """The moving average of one optimizer's parameters (local shards under sharding)."""

    def __init__(self, rules: UpdateRules):
        self.rules, self.average, self.steps = rules, {}, 0

    @torch.no_grad()
    def update(self, optimizer) -> None:
        momentum = self.rules.ema_momentum if self.steps else 0.0
        for group in optimizer.param_groups:
            for p in group["params"]:
                local = _local(p)
                avg = self.average.get(p)
                if avg is None:
                    self.average[p] = local.detach().clone()
                else:
                    avg.mul_(momentum).add_(local.detach(), alpha=1.0 - momentum)
        self.steps += 1
        freq = self.rules.ema_overwrite_frequency
        if freq and self.steps % freq == 0:
            self.overwrite()

    @torch.no_grad()
    def overwrite(self) -> None:
        """Replace the weights by their average (Keras's finalize_variable_values)."""
        for p, avg in self.average.items():
            _local(p).copy_(avg)


def rules_of(optimizer) -> UpdateRules | None:
    """The UpdateRules `optimizer` was built with, or None."""
    return getattr(optimizer, _ATTR, None)


def finish_ema(optimizer) -> None:
    """At the end of fit, where `use_ema` is set: the weights become their moving average
    (Keras's `finalize_variable_values`, which fit calls whatever the overwrite frequency).

    `optimizer` is what the strategy built: a torch optimizer, a ZeroRedundancyOptimizer
    (each rank averages its partition, then every partition is broadcast) or a host-side
    HostOptimizer (the averaged host weights are copied back to the device)."""
    host = loaded_instance(optimizer, "bigtrain.parallel.cpu_optimizer", "HostOptimizer")
    inner = optimizer.optim if is_zero_optimizer(optimizer) else \
        optimizer.optimizer if host else optimizer
    ema = getattr(inner, "_bigtrain_ema", None)
    if ema is None:
        return
    ema.overwrite()
    if is_zero_optimizer(optimizer):
        optimizer._sync_params()
    elif host:
        optimizer.copy_masters_to_device()
