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

import warnings
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
        exclude_from_decay: the weights weight_decay skips (Keras's
            `exclude_from_weight_decay`), or None: an object whose
            `excluded_ids(params)` gives the ids of those among the optimizer's `params`
            (bigtrain.api.optimizer_decay.DecayExclusion).
    """
    clipnorm: float | None = None
    global_clipnorm: float | None = None
    clipvalue: float | None = None
    weight_decay: float | None = None
    use_ema: bool = False
    ema_momentum: float = 0.99
    ema_overwrite_frequency: int | None = None
    weights: Any = None
    exclude_from_decay: Any = None

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
            # the average travels in state_dict, so that the next fit (which loads this
            # optimizer's state into the one it builds) continues it, as Keras's does
            optimizer.register_state_dict_post_hook(ema.save_into)
            optimizer.register_load_state_dict_pre_hook(ema.load_from)
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
            skip = () if self.exclude_from_decay is None else \
                self.exclude_from_decay.excluded_ids([p for _, ps in groups for p in ps])
            for group, params in groups:
                lr = group["lr"]
                for p in params:
                    if id(p) not in skip:
                        _local(p).mul_(1.0 - float(lr) * self.weight_decay)


def _params(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


_EMA_KEY = "bigtrain_ema"  # beside "state" and "param_groups" in the optimizer's state_dict


class EmaState:
    """The moving average of one optimizer's parameters (local shards under sharding).

    It rides along in the optimizer's `state_dict()` (key "bigtrain_ema": the step count
    and the average by the parameter's position in the param groups), so that a second fit,
    which loads the first fit's optimizer state, continues the average and Keras's momentum
    (zero only at the very first step) instead of restarting them; model files keep it
    too (`ema_tensors`), and the ranks of a fit on several processes hand it back whole
    (bigtrain.engine.carry_state). A torch collective state dict keeps only "state" and
    "param_groups": a fit that loads such a state without the average restarts the
    average and says so."""

    def __init__(self, rules: UpdateRules):
        self.rules, self.average, self.steps = rules, {}, 0
        self.restarts = False  # loaded a trained optimizer's state without its average

    def save_into(self, optimizer, state_dict: dict) -> None:
        """state_dict post-hook: add the average (the local tensors, cloned)."""
        if self.restarts:  # none to hand on: the next loader restarts (and says so)
            return
        where = {id(p): i for i, p in enumerate(_params(optimizer))}
        state_dict[_EMA_KEY] = {"steps": self.steps,
                                "average": {where[id(p)]: avg.detach().clone()
                                            for p, avg in self.average.items()
                                            if id(p) in where}}

    def load_from(self, optimizer, state_dict: dict) -> dict:
        """load_state_dict pre-hook: take the average back out of `state_dict` (torch's
        loader would not know the key); an average whose shapes do not fit is dropped."""
        saved = state_dict.pop(_EMA_KEY, None)
        if saved is None:  # a state from the ranks' gather or a file without the average
            self.restarts = any(g.get("iterations") for g in state_dict.get("param_groups", ()))
            return state_dict
        params = _params(optimizer)
        average = {}
        for i, avg in saved["average"].items():
            i = int(i)
            if i >= len(params) or _local(params[i]).shape != avg.shape:
                return state_dict  # another model or sharding: the average restarts
            local = _local(params[i])
            average[params[i]] = avg.detach().to(device=local.device, dtype=local.dtype).clone()
        self.average, self.steps, self.restarts = average, int(saved["steps"]), False
        return state_dict

    @torch.no_grad()
    def update(self, optimizer) -> None:
        if self.restarts:
            self.restarts = False
            if not dist.is_initialized() or dist.get_rank() == 0:
                warnings.warn("use_ema: this fit continues an optimizer state that came "
                              "without its moving average of the weights, so the average "
                              "restarts from the current weights, where Keras's would "
                              "continue; to "
                              "average exactly, fit once with more epochs", UserWarning,
                              stacklevel=2)
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


_EMA_FILE = "ema."  # model-file keys: "ema.<parameter name>", and "ema.steps"


def ema_tensors(module, optimizer) -> dict[str, torch.Tensor]:
    """The moving average of `use_ema` (one process: plain tensors) by parameter name, for
    a model file, so that the loaded model's next fit continues it; {} without use_ema."""
    ema = getattr(optimizer, "_bigtrain_ema", None)
    if ema is None or not ema.steps:
        return {}
    names = {id(p): name for name, p in module.named_parameters()}
    out = {_EMA_FILE + names[id(p)]: avg.detach().cpu().clone()
           for p, avg in ema.average.items() if id(p) in names}
    out[_EMA_FILE + "steps"] = torch.tensor(ema.steps)
    return out


def pop_ema_tensors(tensors: dict) -> dict[str, torch.Tensor]:
    """Take `ema_tensors`' entries out of a file's optimizer tensors."""
    return {k: tensors.pop(k) for k in [k for k in tensors if k.startswith(_EMA_FILE)]}


def load_ema_tensors(module, optimizer, tensors: dict) -> None:
    """Continue the average `ema_tensors` saved in `optimizer` (built over `module`)."""
    ema = getattr(optimizer, "_bigtrain_ema", None)
    if ema is None or _EMA_FILE + "steps" not in tensors:
        return
    params = dict(module.named_parameters())
    average = {params[k[len(_EMA_FILE):]]: v for k, v in tensors.items()
               if k[len(_EMA_FILE):] in params}
    where = {id(p): i for i, p in enumerate(_params(optimizer))}
    ema.load_from(optimizer, {_EMA_KEY: {
        "steps": int(tensors[_EMA_FILE + "steps"]),
        "average": {where[id(p)]: avg for p, avg in average.items() if id(p) in where}}})


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
