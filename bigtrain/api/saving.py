"""`load_model`: rebuild a Model from a file written by `Model.save` (bigtrain.api.files
writes and reads the safetensors; nothing here can execute code from a file); and the
architecture-only rebuilds `model_from_json` and `clone_model`.

Example:
    model = bigtrain.models.load_model("model.bigtrain")
"""
from __future__ import annotations

import json
import os
import warnings

from bigtrain.api.files import (FORMAT, load_weights, read, save_model, save_weights,  # noqa: F401
                                split)
from bigtrain.api.architecture import model_from_config, nested_builder
from bigtrain.api.functional import GraphModule, graph_from_config, graph_outputs
from bigtrain.api.loss_config import losses_from_configs
from bigtrain.api.model import Model, Sequential
from bigtrain.api.optimizer_config import spec_from_config
from bigtrain.api.save_args import refuse_keras_files
from bigtrain.engine import checkpoint_state as cs
from bigtrain.parallel.update_rules import load_ema_tensors, pop_ema_tensors


def load_model(filepath: str, custom_objects: dict | None = None, compile: bool = True,
               safe_mode: bool = True):
    """Rebuild a model saved with `Model.save`: architecture, weights, compile settings and
    the optimizer state, so that a further fit continues as the saved model's would (as
    Keras's `.keras` files do).

    Args:
        custom_objects: {class name: Layer subclass} for layers of your own, and {name:
            function or loss object} for a loss of your own (a file holds no code).
        compile: compile the model as it was saved, each loss with its arguments, and
            restore its optimizer state (False: architecture and weights only, as in
            Keras).
        safe_mode: accepted for Keras's sake; bigtrain's files hold no code (no lambdas,
            no pickle), so every load is safe.

    Example:
        model = bigtrain.models.load_model("model.bigtrain")
    """
    path = os.fspath(filepath)
    refuse_keras_files(path)
    meta, tensors = read(path)
    if meta.get("kind") != "model":
        raise ValueError(f"{path} holds weights only; build the model in code and call "
                         "model.load_weights(path)")
    arch = json.loads(meta["architecture"])
    graph = graph_from_config(arch["graph"], custom_objects,
                              nested_builder(custom_objects, Model, Sequential))
    model = Model(graph.input_tensors, graph_outputs(graph), name=arch.get("name"))
    weights, optim = split(meta, tensors)
    model.net.load_state_dict(weights)
    c = arch.get("compile")
    losses = _saved_losses(c, custom_objects, path) if compile and c else None
    if losses and c["optimizer"]:
        config = c.get("optimizer_config")  # files before it: the name and rate alone
        optimizer = spec_from_config(config, custom_objects) if config else c["optimizer"]
        model.compile(optimizer=optimizer, loss=losses, metrics=c["metrics"],
                      weighted_metrics=c.get("weighted_metrics") or None,
                      loss_weights=c["loss_weights"], learning_rate=None if config else c["lr"])
        if config:  # compile starts a spec at step 0; the file's schedule continues
            model.compiled.optimizer.start_step = config.get("start_step", 0)
        if "optimizer" in meta:  # files saved before optimizer state was kept have none
            _restore_optimizer(model, json.loads(meta["optimizer"]), optim, path)
    return model


def _saved_losses(c: dict, custom_objects: dict | None, path: str) -> list | None:
    """The saved model's loss per output, with its arguments ("loss_configs"; files
    before them hold the names alone), or None, with a warning, when a loss is a function
    of the user's that `custom_objects` does not give."""
    if "loss_configs" in c:
        losses, missing = losses_from_configs(c["loss_configs"], custom_objects)
    else:
        losses, missing = c["losses"], ["?" for name in c["losses"] if not name]
    if not missing:
        return losses
    named = [m for m in missing if m != "?"]
    fix = (f"pass custom_objects={{{', '.join(f'{m!r}: {m}' for m in named)}}} (the function "
           "or the loss object you compiled with), or compile" if named else "compile")
    warnings.warn(f"load_model({path!r}) returns the model uncompiled: its loss "
                  f"{', '.join(named) or '(unnamed)'} is a function or class of your own (or "
                  "a torch loss with a tensor argument), which a file holds no code for: "
                  f"{fix} the loaded model yourself before fit or evaluate (the saved "
                  "optimizer state is then left out)", UserWarning, stacklevel=3)
    return None


def _restore_optimizer(model, saved: dict, tensors: dict, path: str) -> None:
    """Make the saved optimizer state what the model's next fit continues from, as the
    next fit of the saved model would have (bigtrain.engine.carry)."""
    if saved.get("class") is None:  # its next fit would have started fresh, and said so
        model.keep_optimizer(None)
        return
    optimizer = model.compiled.optimizer.build(model.net.parameters())
    ema = pop_ema_tensors(tensors := dict(tensors))  # use_ema's average
    if cs.optimizer_name(optimizer) != saved["class"]:
        problems = [f"optimizer {saved['class']} saved, {cs.optimizer_name(optimizer)} compiled"]
    else:
        problems = cs.load_optimizer(model.net, optimizer, tensors, saved["param_groups"])
    if problems:
        warnings.warn(f"load_model({path!r}) left the optimizer state out, the model's next fit "
                      f"starts a fresh optimizer: {'; '.join(problems[:5])}", UserWarning,
                      stacklevel=3)
        return
    load_ema_tensors(model.net, optimizer, ema)
    model.optimizer = optimizer
    model.keep_optimizer(optimizer)


def model_from_json(json_string: str, custom_objects: dict | None = None):
    """A new model, with fresh weights, from `model.to_json()` (architecture only, as
    Keras's `model_from_json`).

    Example:
        clone = bigtrain.models.model_from_json(model.to_json())
        clone.set_weights(model.get_weights())
    """
    data = json.loads(json_string)
    return model_from_config(data.get("config", data), custom_objects, Model, Sequential)


def clone_model(model, input_tensors=None, clone_function=None, call_function=None,
                recursive=False, **kwargs):
    """A new model of the same architecture, with fresh weights and not compiled, as
    Keras's `clone_model`: its layers keep their names and arguments (layer classes of
    your own included); a model called as a layer is rebuilt too. `recursive` changes
    nothing here; `input_tensors`, `clone_function` and `call_function` are refused.

    Example:
        twin = bigtrain.models.clone_model(model)
        twin.set_weights(model.get_weights())
    """
    asked = [k for k, v in (("input_tensors", input_tensors), ("clone_function", clone_function),
                            ("call_function", call_function)) if v is not None] + list(kwargs)
    if asked:
        raise ValueError(f"clone_model() does not take {', '.join(asked)} in bigtrain: it "
                         "rebuilds the model from model.get_config(); to change layers, "
                         "build the new model from them in code")
    if not isinstance(model, Model):
        raise TypeError(f"clone_model() takes a bigtrain.models Model or Sequential, got "
                        f"{type(model).__name__}")
    if model.net is not None and model.keras_kind != "Sequential" and \
            not isinstance(model.net, GraphModule):
        raise ValueError("clone_model() rebuilds functional and Sequential models; this one "
                         "wraps a torch module, which has no architecture to rebuild from: "
                         "use copy.deepcopy(model) (it copies the weights too)")
    classes = {type(m).__name__: type(m) for m in model.modules()}  # the user's layers too
    return model_from_config(model.get_config(), classes, Model, Sequential)
