"""The compiled optimizer as JSON, for model files: every setting, not just its name.

A model file that kept only the optimizer's name and learning rate reloaded SGD without its
momentum, Adam with default betas, AdamW without clipping, and a schedule as its last rate,
so a fit of the loaded model trained another way than the saved model would have. The
config holds the torch class (by name, looked up among bigtrain's and torch's optimizers:
a file names no code to import), its arguments, the schedule, and Keras's update rules.

    config = spec_config(model.compiled.optimizer)    # JSON-able, or None
    spec = spec_from_config(config, custom_objects)   # an OptimizerSpec to compile with
"""
from __future__ import annotations

import dataclasses

import torch

from bigtrain.api import optimizer_kernels, schedules
from bigtrain.api.optimizer_decay import DecayExclusion
from bigtrain.api.optimizers import OptimizerSpec
from bigtrain.parallel.update_rules import UpdateRules

_MODULES = {"bigtrain": optimizer_kernels, "torch": torch.optim}


def spec_config(spec: OptimizerSpec) -> dict | None:
    """`spec` as JSON-able data, or None when a part of it cannot be named in a file (a
    torch optimizer class or a schedule of the user's own: the file keeps name and rate)."""
    cls = spec.cls
    where = next((k for k, mod in _MODULES.items() if getattr(mod, cls.__name__, None) is cls),
                 None)
    kwargs = {}
    for key, value in spec.kwargs.items():
        if callable(value):  # a learning-rate schedule
            value = _schedule_config(value)
            if value is None:
                return None
        elif isinstance(value, tuple):
            value = {"tuple": list(value)}
        elif isinstance(value, torch.Tensor):
            value = value.item()
        kwargs[key] = value
    if where is None:
        return None
    rules = None
    if spec.rules is not None:
        rules = {f.name: getattr(spec.rules, f.name) for f in dataclasses.fields(spec.rules)
                 if f.name not in ("weights", "exclude_from_decay")}  # penalties: compile's
        if spec.rules.exclude_from_decay is not None:
            rules["exclude_from_decay"] = spec.rules.exclude_from_decay.config()
            if rules["exclude_from_decay"] is None:  # torch tensors: a file cannot name them
                return None
    groups = None
    if spec.groups is not None:  # a torch instance's own groups: positions and settings
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                  for g in spec.groups]
    return {"module": where, "class": cls.__name__, "kwargs": kwargs, "name": spec.name,
            "rules": rules, "groups": groups,
            "start_step": spec.start_step}  # a schedule's steps (Keras saves `iterations`)


def _schedule_config(schedule) -> dict | None:
    if not isinstance(schedule, schedules.LearningRateSchedule):
        return None
    try:
        return {"schedule": type(schedule).__name__, "config": schedule.get_config()}
    except NotImplementedError:
        return None


def spec_from_config(config: dict, custom_objects: dict | None = None) -> OptimizerSpec:
    """The OptimizerSpec `spec_config` described; `custom_objects` names schedule classes
    of the user's own."""
    module = _MODULES.get(config["module"])
    cls = getattr(module, config["class"], None) if module else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"the file's optimizer class {config['module']}.{config['class']} is "
                         "not one of bigtrain's or torch's optimizers")
    kwargs = {}
    for key, value in config["kwargs"].items():
        if isinstance(value, dict) and "tuple" in value:
            value = tuple(value["tuple"])
        elif isinstance(value, dict) and "schedule" in value:
            value = _schedule(value, custom_objects or {})
        kwargs[key] = value
    rules = None
    if config.get("rules"):
        saved = dict(config["rules"])
        excluded = saved.pop("exclude_from_decay", None)
        rules = UpdateRules(**saved, exclude_from_decay=None if excluded is None else
                            DecayExclusion(excluded["names"], excluded["paths"]))
    groups = config.get("groups")
    if groups is not None:
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return OptimizerSpec(cls, kwargs, config["name"], rules, groups,
                         config.get("start_step", 0))


def _schedule(config: dict, custom_objects: dict):
    name = config["schedule"]
    cls = custom_objects.get(name) or getattr(schedules, name, None)
    if not (isinstance(cls, type) and issubclass(cls, schedules.LearningRateSchedule)):
        raise ValueError(f"the file's learning-rate schedule {name} is not one of "
                         "bigtrain.optimizers.schedules; pass it to load_model in "
                         f"custom_objects={{'{name}': {name}}}")
    return cls.from_config(config["config"])
