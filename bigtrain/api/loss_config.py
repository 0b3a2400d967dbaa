"""A compiled model's losses as JSON for its file (`Model.save`), and back
(`load_model`), with every argument the user gave, so that a loaded model trains on the
loss the saved one trained on.

One dict per output:
    {"name": "categorical_crossentropy", "from_logits": False, "reduction": "sum",
     "options": {"label_smoothing": 0.1}}          bigtrain's loss, or Keras's twin of it
    {"function": "kl_divergence", "module": "keras.src.losses.losses",
     "arguments": {}, "keras_call": True, "reduction": ...}      any other callable

A loss bigtrain knows (its own; Keras's built-in loss functions; torch.nn.functional's;
torch.nn's loss classes with plain arguments) is rebuilt from the file; the user's own
function or class is looked up by name in `custom_objects`, as Keras does. A file only
picks among these: nothing here imports a module or runs code that a file names.

Example:
    configs = loss_configs(model.compiled)                  # JSON-able, one per output
    losses, missing = losses_from_configs(configs, {"my_loss": my_loss})
"""
from __future__ import annotations

import dataclasses
import inspect
import json

import torch
import torch.nn.functional as F

from bigtrain.api.losses import KerasFunction, LossSpec, get_loss, named_loss


def loss_configs(compiled) -> list[dict]:
    """Per output, its loss as the user gave it.

    Args:
        compiled: the model's `Compiled` (training.py); an output whose activation compile
            moved into the loss (`activations[i]` set) has from_logits=True set by compile,
            not by the user: the file keeps the user's False, and compiling the loaded
            model moves the activation again.
    """
    return [_config(spec, deferred=act is not None)
            for spec, act in zip(compiled.losses, compiled.activations)]


def _config(spec: LossSpec, deferred: bool) -> dict:
    if spec.name is not None:
        return {"name": spec.name, "from_logits": spec.from_logits and not deferred,
                "reduction": spec.reduction, "options": _plain(spec.options)}
    fn, arguments, keras_call = spec.fn, None, False
    if isinstance(fn, torch.nn.modules.loss._Loss):  # torch's loss class, its arguments
        fn, arguments = type(fn), _torch_arguments(fn)
    elif isinstance(fn, KerasFunction):
        owner = getattr(fn.fn, "__self__", None)
        if owner is None:  # a Keras loss object: its function and arguments
            fn, arguments, keras_call = fn.fn, _json_or_none(_plain(fn.kwargs)), True
        else:  # a Keras Loss subclass of the user's (its `call`)
            fn = type(owner)
    return {"function": getattr(fn, "__name__", None) or type(fn).__name__,
            "module": getattr(fn, "__module__", None) or type(fn).__module__,
            "arguments": arguments, "keras_call": keras_call,
            "torch_order": spec.torch_order, "reduction": spec.reduction}


_MISSING = object()


def _torch_arguments(module) -> dict | None:
    """A torch loss module's constructor arguments, read from the attributes that hold
    them (CrossEntropyLoss(label_smoothing=0.1).label_smoothing), or None where one is not
    a plain value (a class-weight tensor): such a loss needs custom_objects."""
    names = [p for p in inspect.signature(type(module)).parameters
             if p not in ("size_average", "reduce")]  # deprecated, folded into reduction
    values = {p: getattr(module, p, _MISSING) for p in names}
    if all(v is None or isinstance(v, (bool, int, float, str)) for v in values.values()):
        return values
    return None


def _json_or_none(values: dict) -> dict | None:
    """`values`, or None where one is no JSON value (an array): the loss then needs
    custom_objects rather than losing that argument."""
    try:
        json.dumps(values)
    except (TypeError, ValueError):
        return None
    return values


def _plain(values: dict) -> dict:
    """`values` with numpy scalars as Python numbers and tuples as lists (JSON's types)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v
    return {k: plain(v) for k, v in values.items()}


def losses_from_configs(configs: list[dict], custom_objects: dict | None
                        ) -> tuple[list[LossSpec], list[str]]:
    """(the losses, per output, to compile the loaded model with; the names of those
    that could not be rebuilt: functions of the user's missing from `custom_objects`)."""
    losses, missing = [], []
    for config in configs:
        spec = _from_config(config, custom_objects or {})
        if spec is None:
            missing.append(config.get("function") or "?")
        losses.append(spec)
    return losses, missing


def _from_config(config: dict, custom_objects: dict) -> LossSpec | None:
    reduction = config.get("reduction", "sum_over_batch_size")
    if config.get("name") is not None:
        return named_loss(config["name"], config.get("from_logits", False), reduction,
                          **config.get("options", {}))
    name = config.get("function")
    if name in custom_objects:  # the user's function, class or loss object, as compiled
        found = custom_objects[name]
        if config.get("keras_call") and inspect.isfunction(found):  # a Keras wrapper's fn
            return LossSpec(None, KerasFunction(found, config.get("arguments") or {}),
                            reduction=reduction)
        return get_loss(found() if isinstance(found, type) else found)
    fn = _builtin(name, config.get("module") or "")
    if fn is None:
        return None
    arguments = config.get("arguments")
    if isinstance(fn, type):  # torch's loss class
        return None if arguments is None else get_loss(fn(**arguments))
    if config.get("keras_call"):
        return None if arguments is None else \
            LossSpec(None, KerasFunction(fn, arguments), reduction=reduction)
    return dataclasses.replace(get_loss(fn), reduction=reduction)


def _builtin(name: str | None, module: str):
    """Keras's loss function `name` (keras.losses), torch.nn.functional's, torch.nn's
    loss class, or None."""
    if not name:
        return None
    if module == "torch.nn.functional":
        fn = getattr(F, name, None)
    elif module.startswith("torch.nn.modules."):
        fn = getattr(torch.nn, name, None)
        return fn if isinstance(fn, type) and issubclass(fn, torch.nn.modules.loss._Loss) \
            else None
    elif module.split(".")[0] == "keras":
        try:
            import keras
        except ImportError:
            return None
        fn = getattr(keras.losses, name, None)
    else:
        return None
    ok = callable(fn) and not isinstance(fn, type) and \
        (getattr(fn, "__module__", "") or "").split(".")[0] in ("keras", "torch")
    return fn if ok else None
