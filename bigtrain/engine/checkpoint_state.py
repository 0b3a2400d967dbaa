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
import contextlib
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from bigtrain.parallel.lazy_types import is_zero_optimizer

MODEL, OPTIM = "model.", "optim."


def _dcp():
    """torch's state-dict functions for any parallelism, imported on first use: about 0.4 s
    that a process which never checkpoints or saves does not pay."""
    import torch.distributed.checkpoint.state_dict as state_dict
    return state_dict


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (ZeRO's local optimizer under zero1)."""
    return optimizer.optim if is_zero_optimizer(optimizer) else optimizer


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
    renamed: dict | None = None  # user-model fqn -> checkpoint fqn (see `match_names`)


def live_state(module, optimizer, names=None) -> LiveState:
    """Model and optimizer state of this rank in checkpoint layout (no copies).

    An optimizer that has not stepped yet gets its state created first (torch does a zero
    step with lr=0), so a checkpoint can be loaded into it.

    Args:
        names: `Strategy.checkpoint_names(module)`: None, or (rename, model keys) for a
            rank whose module names its tensors otherwise than the user's model does, or
            (rename, model keys, state rename) where optimizer state takes other names than
            the model's tensors (a weight tied across pipeline stages: one process keeps
            one optimizer entry, under the weight's first name).
    """
    rename, known = names[:2] if names is not None else (None, None)
    state_name = names[2] if names is not None and len(names) > 2 else rename
    local = _dcp().get_model_state_dict(module)
    if rename is None:
        tensors, model_keys = {MODEL + k: v for k, v in local.items()}, None
    else:
        model_keys = {MODEL + rename(k): k for k in local}
        tensors = {key: local[k] for key, k in model_keys.items()}
    inner = inner_optimizer(optimizer)
    with _no_step_hooks(inner):
        osd = _dcp().get_optimizer_state_dict(module, inner)
    slots = {}
    for fqn, state in osd["state"].items():
        for name, value in state.items():
            if value is None:
                continue
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {fqn!r}/{name!r} is a {type(value).__name__}, "
                                "not a tensor; bigtrain checkpoints hold tensor optimizer state "
                                "only (torch.optim's built-in optimizers qualify)")
            key = f"{OPTIM}{fqn if state_name is None else state_name(fqn)}.{name}"
            tensors[key], slots[key] = value, (fqn, name)
    known = None if known is None else {MODEL + k for k in known}
    return LiveState(tensors, slots, osd["param_groups"], model_keys, known)


@contextlib.contextmanager
def _no_step_hooks(optimizer):
    """Without the optimizer's step hooks while torch reads or loads its state: torch runs
    a step with lr 0 and zero gradients on an optimizer with no state (SGD without momentum
    never has any) to create it, and bigtrain's hooks would make that a real step (a
    schedule sets its rate and counts the step; weight decay and EMA act), so every
    checkpoint shifted a schedule by one step."""
    if optimizer.state:
        yield
        return
    hooks = optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks
    saved = [dict(h) for h in hooks]
    for h in hooks:
        h.clear()
    try:
        yield
    finally:
        for h, kept in zip(hooks, saved):
            h.update(kept)


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
    _dcp().set_model_state_dict(module, {local(k): v for k, v in live.tensors.items()
                                         if k.startswith(MODEL)})
    _apply_optimizer(module, optimizer, live, saved_groups)


def _apply_optimizer(module, optimizer, live: LiveState, saved_groups: list[dict]) -> None:
    """The optimizer half of `apply_loaded`."""
    state: dict = {}
    for key, (fqn, name) in live.slots.items():
        state.setdefault(fqn, {})[name] = live.tensors[key]
    inner = inner_optimizer(optimizer)
    with _no_step_hooks(inner):
        groups = _merge_groups(live.groups, saved_groups)
        _dcp().set_optimizer_state_dict(module, inner, {"state": state, "param_groups": groups},
                                        options=_not_strict())  # see drop_unstepped
    if inner is not optimizer:  # ZeRO exposes the global groups; keep lr & co. in step
        optimizer._sync_param_groups(inner.param_groups, optimizer.param_groups)


def drop_unstepped(live: LiveState, saved: dict) -> None:
    """Leave out of the load the optimizer state of parameters the checkpoint holds none
    for, where it holds that kind of state for others: no gradient had reached them when
    it was saved (an unused head, a layer no step has run yet), so the saving run had no
    state for them either, and they start afresh as they would have. (This rank's live
    state has them: torch makes every parameter's state before a load.) A checkpoint of
    another optimizer holds none of these state names, and still fails `mismatches`."""
    by_param: dict[str, list[str]] = {}
    for key, (fqn, _) in live.slots.items():
        by_param.setdefault(fqn, []).append(key)
    kinds = {k.rsplit(".", 1)[-1] for k in saved if k.startswith(OPTIM)}
    for fqn, keys in by_param.items():
        if all(k not in saved and live.slots[k][1] in kinds for k in keys):
            for k in keys:
                del live.tensors[k], live.slots[k]


def _not_strict():
    """Load options that let a parameter without state (`drop_unstepped`) stay without."""
    return _dcp().StateDictOptions(strict=False)


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


# ---- the same model under other automatic layer names ----------------------------------

_NUMBER = re.compile(r"_(\d+)$")  # dense_3 -> 3: the count Keras-style automatic names end in


def _kind(key: str) -> str:
    """The key without its automatic-name numbers: layers.dense_3.linear.weight ->
    layers.dense.linear.weight."""
    return ".".join(_NUMBER.sub("", part) for part in key.split("."))


def _numbers(key: str) -> list[int]:
    """Each part's automatic-name number (dense: 0, dense_1: 1): the layers' creation order."""
    return [int(m.group(1)) if (m := _NUMBER.search(part)) else 0 for part in key.split(".")]


def _one_to_one(pairs: dict[str, str]) -> bool:
    """Every prefix (a layer, a layer's sublayer) maps to one prefix and back: a layer's
    weight and bias go to the same layer."""
    forward, back = {}, {}
    for ours, theirs in pairs.items():
        a, b = ours.split("."), theirs.split(".")
        for i in range(1, len(a) + 1):
            x, y = ".".join(a[:i]), ".".join(b[:i])
            if forward.setdefault(x, y) != y or back.setdefault(y, x) != x:
                return False
    return True


def auto_name_pairs(ours: dict, theirs: dict) -> dict[str, str] | None:
    """{our key: their key} for two state layouts that differ only in the numbers of
    automatic layer names (dense_2, dense_3 here; dense, dense_1 there): keys of one kind
    pair in creation order. None unless every key pairs, with the same (shape, dtype) where
    both are known (a value None: this rank does not hold that tensor).

    Example:
        auto_name_pairs({"l.dense_2.w": ((4, 5), f32)}, {"l.dense.w": ((4, 5), f32)})
        # {"l.dense_2.w": "l.dense.w"}
    """
    kinds: dict[str, tuple[list, list]] = {}
    for side, keys in enumerate((ours, theirs)):
        for key in keys:
            kinds.setdefault(_kind(key), ([], []))[side].append(key)
    pairs = {}
    for a, b in kinds.values():
        if len(a) != len(b):
            return None
        for x, y in zip(sorted(a, key=_numbers), sorted(b, key=_numbers)):
            if None not in (ours[x], theirs[y]) and ours[x] != theirs[y]:
                return None
            pairs[x] = y
    return pairs if _one_to_one(pairs) else None


def _spec(t) -> tuple:
    return tuple(t.shape), t.dtype


def match_names(live: LiveState, saved: dict) -> LiveState:
    """`live` under the checkpoint's names where the checkpoint holds this model built under
    other automatic layer names (a notebook cell run again makes dense_2, dense_3 of what
    the checkpoint calls dense, dense_1); `live` itself otherwise, so that `mismatches`
    names what differs.

    Args:
        saved: DCP metadata's `state_dict_metadata`, as for `mismatches`.
    """
    if not mismatches(live, saved):
        return live
    keys = live.known if live.known is not None else [k for k in live.tensors
                                                       if k.startswith(MODEL)]
    ours = {k: _spec(live.tensors[k]) if k in live.tensors else None for k in keys}
    theirs = {k: (tuple(md.size), md.properties.dtype) for k, md in saved.items()
              if k.startswith(MODEL)}
    pairs = auto_name_pairs(ours, theirs)
    if pairs is None or all(a == b for a, b in pairs.items()):
        return live
    renamed = _renamed(live, pairs)
    return live if mismatches(renamed, saved) else renamed


def _renamed(live: LiveState, pairs: dict[str, str]) -> LiveState:
    """`live` with model key k (and its optimizer keys) renamed to pairs[k]."""
    n = len(MODEL)
    local = (lambda k: k[n:]) if live.model_keys is None else live.model_keys.__getitem__
    tensors, slots, model_keys = {}, {}, {}
    for key, value in live.tensors.items():
        if key.startswith(MODEL):
            tensors[pairs[key]], model_keys[pairs[key]] = value, local(key)
    for key, (fqn, name) in live.slots.items():
        param = MODEL + key[len(OPTIM):-len(name) - 1]
        new = OPTIM + pairs.get(param, param)[n:] + "." + name
        tensors[new], slots[new] = live.tensors[key], (fqn, name)
    known = None if live.known is None else {pairs[k] for k in live.known}
    return LiveState(tensors, slots, live.groups, model_keys, known,
                     {a[n:]: b[n:] for a, b in pairs.items()})


# ---- optimizer state in a model file ---------------------------------------------------

def optimizer_tensors(module, optimizer) -> tuple[dict, list[dict]]:
    """(tensors, param-group settings) of `optimizer` over `module`'s parameters in
    checkpoint layout (`optim.<fqn>.<state name>`), for a file `load_optimizer` reads."""
    live = live_state(module, optimizer)
    tensors = {k: v.detach().cpu() for k, v in live.tensors.items() if k.startswith(OPTIM)}
    return tensors, group_hyperparameters(live.groups)


def load_optimizer(module, optimizer, tensors: dict, groups: list[dict]) -> list[str]:
    """Load what `optimizer_tensors` returned into a fresh `optimizer` over `module` (as a
    checkpoint resumes: its step counts, moments, hyperparameters). Returns what does not
    fit (then nothing is loaded), or [].
    """
    live = live_state(module, optimizer)
    ours = {k: v for k, v in live.tensors.items() if k.startswith(OPTIM)}
    problems = [f"missing: {k} {tuple(v.shape)}" for k, v in ours.items() if k not in tensors]
    problems += [f"shape mismatch: {k} saved {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
                 for k, v in ours.items() if k in tensors and tensors[k].shape != v.shape]
    problems += [f"not in this model: {k}" for k in tensors if k not in ours]
    if len(groups) != len(live.groups):
        problems.append(f"{len(groups)} parameter groups saved, {len(live.groups)} here")
    if not problems:
        _apply_optimizer(module, optimizer, LiveState(dict(tensors), live.slots, live.groups),
                         groups)
    return problems


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
