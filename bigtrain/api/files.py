"""Model files without pickle: weights as safetensors, the architecture as JSON in the
safetensors metadata. A `.bigtrain` file (or any path) written by `Model.save` holds both,
and the optimizer state the next fit continues from (tensors under `optim.<fqn>.<state>`
keys as in a checkpoint; param-group settings and the tensor keys as JSON, "optimizer");
`bigtrain.api.saving.load_model` rebuilds the graph from JSON and loads the tensors.
Nothing here can execute code from a file. Model's save/load methods call this module;
it never imports the Model class.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bigtrain.api.functional import GraphModule, graph_config
from bigtrain.api.loss_config import loss_configs
from bigtrain.api.optimizer_config import spec_config
from bigtrain.engine import checkpoint_state as cs
from bigtrain.engine.carry import carried_optimizer
from bigtrain.engine.checkpoint_dir import replace_synced
from bigtrain.parallel.update_rules import ema_tensors

FORMAT = "bigtrain.model/1"
#: why a file holds no optimizer state although the model trained (metadata "optimizer")
SEVERAL_PROCESSES = ("the optimizer state is with the ranks of a fit on several processes: "
                     "it is handed back when such a fit ends, but not during it (a callback's "
                     "save) nor under parameter servers, pipelines, hybrid or "
                     "ddp_cpu_optimizer")


def _atomic_save(tensors: dict, path: str, metadata: dict) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename (and fsync the
    folder): a crash or power loss mid-write leaves any previous file at `path` intact, and
    never an empty file under its name."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        replace_synced(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weights(model, path: str) -> None:
    state = model.state_for_saving()
    _atomic_save(state, path, {"format": FORMAT, "kind": "weights", "order": json.dumps(list(state))})


def read(path: str) -> tuple[dict, dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a bigtrain model or weights file (expected safetensors "
                         f"written by Model.save/save_weights): {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but was not written by bigtrain "
                         "(missing format metadata); load it with safetensors directly")
    return meta, tensors


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _in_saved_order(meta: dict, tensors: dict) -> list:
    """The saved tensors in the model's order at save time (natural key order if unknown)."""
    order = json.loads(meta["order"]) if "order" in meta else sorted(tensors, key=_natural)
    return [tensors[k] for k in order if k in tensors]


def _same_layout(own: dict, saved: list) -> bool:
    """Same number of tensors with the same shapes, in the same order."""
    return len(own) == len(saved) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(own.values(), saved))


def split(meta: dict, tensors: dict) -> tuple[dict, dict]:
    """(weights, optimizer tensors) of a file: `save_model` keeps the optimizer's under
    `optim.` keys, which no network's state dict has (its keys start with `layers.`)."""
    keys = set(json.loads(meta.get("optimizer", "{}")).get("keys", []))
    return ({k: v for k, v in tensors.items() if k not in keys},
            {k: v for k, v in tensors.items() if k in keys})


def load_weights(model, path: str) -> None:
    meta, tensors = read(path)
    tensors = split(meta, tensors)[0]
    own = model.net.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in tensors and tensors[k].shape != own[k].shape]
    ordered = _in_saved_order(meta, tensors)
    if (missing or unexpected or wrong) and _same_layout(own, ordered):
        # Same architecture built under other automatic names (dense_2 vs dense, or dense_1
        # there holding what dense holds here): match the weights by their order, as Keras
        # does for topologically saved weights.
        tensors = dict(zip(own, ordered))
        missing = unexpected = wrong = []
    if missing or unexpected or wrong:
        raise ValueError(f"the weights in {path} do not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")
    model.net.load_state_dict(tensors)


def _optimizer_state(model, include: bool) -> tuple[dict, dict]:
    """(tensors, metadata) of the optimizer state the model's next fit would continue from
    (bigtrain.engine.carry): the last fit's, or the running fit's when a callback saves."""
    if not include:
        return {}, {}
    if model.live is not None:  # mid-fit: the optimizer that is stepping now
        optimizer = carried_optimizer(model.live.strategy, model.optimizer)
    elif model.carry() is not None:
        optimizer = model.carry().optimizer
    else:
        return {}, {}  # not trained since compile: the next fit starts fresh anyway
    if optimizer is None:
        warnings.warn(f"Model.save keeps no optimizer state: {SEVERAL_PROCESSES}. A fit of the "
                      "loaded model starts with a fresh optimizer; to continue exactly, fit "
                      "with checkpoint_dir=", UserWarning, stacklevel=4)
        return {}, {"optimizer": json.dumps({"class": None, "why": SEVERAL_PROCESSES})}
    if not optimizer.state and not any(g.get("iterations") for g in optimizer.param_groups):
        return {}, {}  # it never stepped (a schedule's step count is state too)
    ema = ema_tensors(model.net, optimizer)  # use_ema's average (before a state init step)
    tensors, groups = cs.optimizer_tensors(model.net, optimizer)
    tensors.update(ema)
    return tensors, {"optimizer": json.dumps({"class": cs.optimizer_name(optimizer),
                                              "param_groups": groups, "keys": list(tensors)})}


def _optimizer_config(spec, include_optimizer: bool) -> dict | None:
    config = spec_config(spec)
    if config is not None and not include_optimizer:  # a fresh optimizer, as Keras's file
        config["start_step"] = 0
    if config is None:
        warnings.warn(f"Model.save keeps only the optimizer's name ({spec.name}) and first "
                      "learning rate: its torch class or learning-rate schedule is not one of "
                      "bigtrain's or torch's, and a file names no code. Compile the loaded "
                      "model again with your optimizer (load_model(..., compile=False)).",
                      UserWarning, stacklevel=4)
    return config


def save_model(model, path: str, include_optimizer: bool = True) -> None:
    if not isinstance(model.net, GraphModule):
        raise ValueError("Model.save stores the architecture as JSON, which needs a functional "
                         "or Sequential model; for a wrapped torch module use save_weights() "
                         "and rebuild the module in code")
    arch = {"name": model.name, "graph": graph_config(model.net)}
    if model.compiled is not None:
        c = model.compiled
        arch["compile"] = {"losses": [spec.name for spec in c.losses],
                           "loss_configs": loss_configs(c),  # with their arguments
                           "loss_weights": c.loss_weights, "metrics": c.metric_names,
                           "weighted_metrics": c.weighted_names,
                           "optimizer": c.optimizer.name, "lr": c.optimizer.learning_rate,
                           "optimizer_config": _optimizer_config(c.optimizer,
                                                                 include_optimizer)}
    state = model.state_for_saving()
    optim, optim_meta = _optimizer_state(model, include_optimizer)
    _atomic_save({**state, **optim}, path, {"format": FORMAT, "kind": "model",
                                            "architecture": json.dumps(arch),
                                            "order": json.dumps(list(state)), **optim_meta})
