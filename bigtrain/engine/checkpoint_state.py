"""What one checkpoint holds, and how it moves between a live run and
torch.distributed.checkpoint (DCP).

Tensors go through DCP under flat keys, so every strategy writes the same layout and a run
saved on N ranks loads on M ranks (DCP reshards what each rank asks for):

    model.<fqn>                  a parameter or buffer, full shape (e.g. (64, 1000))
    optim.<fqn>.<state name>     optimizer state of that parameter (exp_avg, step, ...)

`fqn` is the parameter's name in the plain, unwrapped network (DDP's `module.` prefix
dropped), as `torch.distributed.checkpoint.state_dict.get_state_dict` names it. Under FSDP2
the tensors are DTensors and each rank writes / reads only its shard. Under
ZeroRedundancyOptimizer (zero1) each rank writes the optimizer state of the parameters its
partition owns (the keys differ by rank; together they cover every parameter) and on load
reads those of its new partition, so no rank ever gathers the whole optimizer state.

Everything that is not a tensor (param-group hyperparameters, RNG states) is JSON.
"""
from __future__ import annotations

import base64
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.optim import ZeroRedundancyOptimizer

MODEL, OPTIM = "model.", "optim."


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (ZeRO's local optimizer under zero1)."""
    return optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """Class name recorded in the checkpoint ("Adam" for zero1 over Adam too)."""
    return type(inner_optimizer(optimizer)).__name__


@dataclass
class LiveState:
    """This rank's view of the run's state, in checkpoint layout.

    Attributes:
        tensors: flat DCP keys -> tensors (live storage where torch allows: loading into
            them writes the model / optimizer state in place).
        slots: optimizer DCP key -> (parameter fqn, state name).
        groups: the optimizer's param groups as `get_optimizer_state_dict` gives them
            (`params` lists fqns of this rank's parameters).
    """
    tensors: dict
    slots: dict
    groups: list
    model_keys: dict | None = None  # checkpoint key -> local fqn, where they differ
    known: set | None = None  # every model key of the whole model, where a rank holds part


def live_state(module, optimizer, names=None) -> LiveState:
    """Model and optimizer state of this rank in checkpoint layout (no copies).

    An optimizer that has not stepped yet gets its state created first (torch does a zero
    step with lr=0), so a checkpoint can be loaded into it.

    Args:
        names: `Strategy.checkpoint_names(module)`: None, or (rename, model keys) for a
            rank whose module names its tensors otherwise than the user's model does.
    """
    rename, known = names if names is not None else (None, None)
    local = get_model_state_dict(module)
    if rename is None:
        tensors, model_keys = {MODEL + k: v for k, v in local.items()}, None
    else:
        model_keys = {MODEL + rename(k): k for k in local}
        tensors = {key: local[k] for key, k in model_keys.items()}
    osd = get_optimizer_state_dict(module, inner_optimizer(optimizer))
    slots = {}
    for fqn, state in osd["state"].items():
        for name, value in state.items():
            if value is None:
                continue
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {fqn!r}/{name!r} is a {type(value).__name__}, "
                                "not a tensor; bigtrain checkpoints hold tensor optimizer state "
                                "only (torch.optim's built-in optimizers qualify)")
            key = f"{OPTIM}{fqn if rename is None else rename(fqn)}.{name}"
            tensors[key], slots[key] = value, (fqn, name)
    known = None if known is None else {MODEL + k for k in known}
    return LiveState(tensors, slots, osd["param_groups"], model_keys, known)


def group_hyperparameters(groups: list) -> list[dict]:
    """Param-group settings as JSON-ready dicts (lr, betas, weight_decay, ...; no params)."""
    out = []
    for group in groups:
        clean = {}
        for k, v in group.items():
            if k == "params":
                continue
            if torch.is_tensor(v):
                v = v.item()
            clean[k] = list(v) if isinstance(v, tuple) else v
        out.append(clean)
    return out


#: param-group keys that pick an implementation, not a hyperparameter: a checkpoint saved
#: with fused kernels (plain tensors) must load into a run whose DTensors cannot use them
_KERNEL_KEYS = ("fused", "foreach")


def _merge_groups(live: list, saved: list[dict]) -> list[dict]:
    """The live groups (this rank's params) with the saved hyperparameters, types kept."""
    if len(live) != len(saved):
        raise ValueError(f"the checkpoint's optimizer has {len(saved)} parameter groups, this "
                         f"run's has {len(live)}; build the optimizer the same way to resume")
    merged = []
    for group, values in zip(live, saved):
        group = dict(group)
        for k, v in values.items():
            if k in _KERNEL_KEYS:
                continue  # this run's parameters chose its kernel (zero3's DTensors: not fused)
            old = group.get(k)
            if torch.is_tensor(old):
                v = torch.tensor(v, dtype=old.dtype, device=old.device)
            elif isinstance(old, tuple):
                v = tuple(v)
            group[k] = v
        merged.append(group)
    return merged


def apply_loaded(module, optimizer, live: LiveState, saved_groups: list[dict]) -> None:
    """Push tensors that DCP loaded into `live.tensors` into the model and optimizer."""
    n = len(MODEL)
    local = (lambda k: k[n:]) if live.model_keys is None else live.model_keys.__getitem__
    set_model_state_dict(module, {local(k): v for k, v in live.tensors.items()
                                  if k.startswith(MODEL)})
    state: dict = {}
    for key, (fqn, name) in live.slots.items():
        state.setdefault(fqn, {})[name] = live.tensors[key]
    inner = inner_optimizer(optimizer)
    set_optimizer_state_dict(module, inner, {"state": state,
                                             "param_groups": _merge_groups(live.groups,
                                                                           saved_groups)})
    if inner is not optimizer:  # ZeRO exposes the global groups; keep lr & co. in step
        optimizer._sync_param_groups(inner.param_groups, optimizer.param_groups)


def mismatches(live: LiveState, saved: dict) -> list[str]:
    """Lines naming every key of this rank's state that the checkpoint lacks or holds with
    another shape, and model keys the checkpoint has that this model lacks.

    Args:
        live: this rank's state (the keys it will ask DCP for).
        saved: DCP metadata's `state_dict_metadata` (key -> TensorStorageMetadata).
    """
    lines = []
    for key, value in live.tensors.items():
        if key not in saved:
            lines.append(f"missing in checkpoint: {key} {tuple(value.shape)}")
            continue
        shape = tuple(getattr(saved[key], "size", ()))
        if shape != tuple(value.shape):  # DTensor.shape is the global shape
            lines.append(f"shape mismatch: {key} checkpoint {shape} vs this run "
                         f"{tuple(value.shape)}")
    ours = live.tensors if live.known is None else live.known
    extra = sorted(k for k in saved if k.startswith(MODEL) and k not in ours)
    lines += [f"not in this model: {k} {tuple(getattr(saved[k], 'size', ()))}" for k in extra]
    model_lines = [line for line in lines if f" {MODEL}" in line]
    if model_lines and len(model_lines) < len(lines):  # optimizer lines would repeat them
        model_lines.append(f"(and {len(lines) - len(model_lines)} optimizer-state entries of "
                           "the same parameters)")
        return model_lines
    return lines


# ---- random number generators ----------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, JSON-ready."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {"torch": _b64(torch.get_rng_state()),
           "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
           "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (CUDA states only where devices exist)."""
    torch.set_rng_state(_unb64(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([_unb64(s) for s in saved])
