"""Keras's `optimizer.exclude_from_weight_decay(var_list=None, var_names=None)`: weights
that the optimizer's `weight_decay` leaves alone (biases, normalization scales).

The exclusion is named at compile time (Keras variables or name patterns), before the model
is known, and must hold on every rank, where strategies replace the parameter objects
(FSDP2, tensor parallel) and an optimizer holds only part of them (ZeRO-1, a pipeline
stage). So it is resolved once against the model (`resolve`) into the (module, attribute)
slots of the excluded weights; at each step the decay hook reads the parameter each slot
holds now, as the weight penalties do (bigtrain.api.regularizers.WeightRules).

    spec = bigtrain.optimizers.AdamW(1e-3, weight_decay=0.1)
    spec.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
"""
from __future__ import annotations

import dataclasses
import inspect
import re

import torch


class DecayExclusion:
    """The weights weight decay skips: `names`, patterns searched (`re.search`) in each
    weight's Keras name ("kernel", "bias", "gamma": the last part of its path, as Keras 3
    matches `variable.name`); `paths`, Keras paths of weights given in `var_list`
    ("dense/bias"); `tensors`, torch parameters given in `var_list` (until resolved)."""

    def __init__(self, names=(), paths=(), tensors=()):
        self.names, self.paths, self.tensors = tuple(names), tuple(paths), tuple(tensors)
        self.slots: tuple | None = None  # ((module, key) of each excluded weight)
        self.known: tuple | None = None  # (module, key) of every parameter of the model

    @classmethod
    def from_keras_args(cls, var_list=None, var_names=None) -> "DecayExclusion":
        names = [var_names] if isinstance(var_names, str) else list(var_names or ())
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"exclude_from_weight_decay: var_names must be strings, got "
                                f"{name!r}")
            re.compile(name)  # a bad pattern fails here, not at the first step
        paths, tensors = [], []
        for var in var_list or ():
            if isinstance(var, torch.Tensor):
                tensors.append(var)
            elif isinstance(getattr(var, "path", None), str):  # model.weights / layer.weights
                paths.append(var.path)
            else:
                raise TypeError(f"exclude_from_weight_decay: var_list takes the model's "
                                f"weights (model.weights, layer.weights) or torch parameters, "
                                f"got {type(var).__name__}")
        return cls(names, paths, tensors)

    def config(self) -> dict | None:
        """As JSON-able data, or None where weights were given as torch tensors (a file
        cannot name them; give `model.weights` entries instead)."""
        if self.tensors:
            return None
        return {"names": list(self.names), "paths": list(self.paths)}

    def __getstate__(self):  # the ranks get the resolved slots, not the caller's tensors
        return {**self.__dict__, "tensors": ()}

    def _excluded(self, path: str, tensor) -> bool:
        name = path.rsplit("/", 1)[-1]
        return (path in self.paths or any(tensor is t for t in self.tensors)
                or any(re.search(pattern, name) for pattern in self.names))

    def resolve(self, model) -> "DecayExclusion":
        """A copy bound to `model`'s weights (a bigtrain Model)."""
        slot_of = {id(p): _slot(model.net, fqn) for fqn, p in model.net.named_parameters()}
        out = DecayExclusion(self.names, self.paths)
        out.known = tuple(slot_of.values())
        out.slots = tuple(slot_of[id(w.value)] for w in model.weights
                          if id(w.value) in slot_of and self._excluded(w.path, w.value))
        return out

    def excluded_ids(self, params) -> set[int]:
        """ids of the parameters among `params` (an optimizer's) that weight decay skips."""
        if self.slots is None:
            raise RuntimeError("exclude_from_weight_decay was not resolved against the model "
                               "(compile the model with this optimizer, then fit)")
        known = {id(module._parameters[key]) for module, key in self.known}
        strangers = [p for p in params if id(p) not in known]
        if strangers:
            raise RuntimeError(
                f"exclude_from_weight_decay: the optimizer holds {len(strangers)} tensors that "
                "are not the model's parameters (copies a strategy steps instead), so the "
                "excluded weights cannot be found; train on one process or with ddp, zero1, "
                "zero2, zero3, fsdp_offload, tensor or pipeline, or drop the exclusion")
        return {id(module._parameters[key]) for module, key in self.slots}


def _slot(net: torch.nn.Module, fqn: str) -> tuple:
    prefix, _, key = fqn.rpartition(".")
    return net.get_submodule(prefix) if prefix else net, key


def exclude(spec, var_list=None, var_names=None) -> None:
    """`spec.exclude_from_weight_decay(...)` (an OptimizerSpec): the exclusion joins its
    UpdateRules; AdamW's decay moves from torch's kernel to those rules (the same
    w -= lr * wd * w before the update), which can skip a weight."""
    from bigtrain.api import optimizer_kernels
    from bigtrain.parallel.update_rules import UpdateRules
    exclusion = DecayExclusion.from_keras_args(var_list, var_names)
    rules = spec.rules or UpdateRules()
    if spec.cls is optimizer_kernels.AdamW:
        wd = spec.kwargs.get("weight_decay") or rules.weight_decay  # (a second call: moved)
        rules = dataclasses.replace(rules, weight_decay=wd or None)
        spec.kwargs["weight_decay"] = 0.0
    elif _torch_decay(spec):
        raise ValueError(f"exclude_from_weight_decay: this {spec.cls.__name__} decays in its "
                         "own torch kernel (weight_decay of a torch optimizer), which cannot "
                         "skip weights; give the torch optimizer instance param groups "
                         "instead (weight_decay=0.0 for the excluded weights), or use a "
                         "bigtrain.optimizers class")
    spec.rules = dataclasses.replace(rules, exclude_from_decay=exclusion)


def _torch_decay(spec) -> float:
    """The weight_decay `spec`'s torch class applies itself (torch's AdamW: 0.01 unless
    given)."""
    if "weight_decay" in spec.kwargs:
        return spec.kwargs["weight_decay"] or 0.0
    default = inspect.signature(spec.cls).parameters.get("weight_decay")
    return 0.0 if default is None or default.default is inspect.Parameter.empty \
        else default.default or 0.0


def resolve_spec(spec, model):
    """`spec` for `model`'s task: its weight-decay exclusion bound to the model's weights
    (the compiled spec is left as it is); `spec` itself when it has none."""
    exclusion = spec.rules.exclude_from_decay if spec.rules is not None else None
    if exclusion is None:
        return spec
    rules = dataclasses.replace(spec.rules, exclude_from_decay=exclusion.resolve(model))
    return dataclasses.replace(spec, rules=rules)
