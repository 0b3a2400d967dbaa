"""The whole optimizer state of a fit on several processes, carried to the next fit.

At the end of such a fit every rank enters `gather_full`; rank 0 gets the state in torch's
full layout (`torch.distributed.checkpoint.state_dict` with `full_state_dict=True`):

    {"state": {fqn: {"step": ..., "exp_avg": full tensor, ...}},
     "param_groups": [{"lr": ..., "iterations": ..., "params": [fqn, ...]}, ...],
     "bigtrain_ema": {"steps": int, "average": {fqn: full tensor}}}   # use_ema only

The last is `use_ema`'s moving average (bigtrain.parallel.update_rules.EmaState), gathered
whole as the moments are, so that the next fit continues it as Keras's would.

`fqn` is the parameter's name in the plain network (DDP's `module.` prefix dropped, as in
checkpoints). FSDP2 and tensor-parallel DTensors are gathered by torch; ZeRO (zero1) ranks
each hold their partition's state, which rank 0 merges. The caller turns it into a plain
optimizer over its own network (`load_into_plain`), which the next fit continues from; a
next fit on several processes gets it back in this layout (`full_of_plain`) and every rank
loads its share (`load_full`).

Not carried (the next fit starts fresh and says so): parameter servers (the state lives on
the servers), pipelines and hybrids (each stage names its parameters its own way), and the
host optimizer of ddp_cpu_optimizer and ddp_balanced(optimizer_device="cpu") (not a torch
optimizer).

Example:
    packed = gather_full(strategy, module, optimizer)       # every rank; bytes on rank 0
    plain = spec.build(net.parameters())
    load_into_plain(plain, net, unpack(packed))             # the caller, after the fit
"""
from __future__ import annotations

import io

import torch
import torch.distributed as dist

from bigtrain.engine import checkpoint_state as cs
from bigtrain.parallel.lazy_types import is_zero_optimizer
from bigtrain.parallel.update_rules import _EMA_KEY as EMA_KEY


def carries(strategy) -> bool:
    """Whether `strategy` can hand its ranks' optimizer state to the next fit and load it."""
    from bigtrain.parallel.cpu_optimizer import CpuOptimizerDataParallel
    from bigtrain.parallel.data_parallel import DataParallel
    from bigtrain.parallel.hybrid import Hybrid
    from bigtrain.parallel.sharded import Sharded
    from bigtrain.parallel.tensor_parallel import TensorParallel
    return (isinstance(strategy, (DataParallel, Sharded, TensorParallel))
            and not isinstance(strategy, (CpuOptimizerDataParallel, Hybrid))
            # ddp_balanced(optimizer_device="cpu") steps a host optimizer, as
            # ddp_cpu_optimizer does: no torch optimizer to gather or load
            and getattr(strategy, "optimizer_device", None) is None)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_full(strategy, module, optimizer) -> bytes | None:
    """The whole optimizer state, on rank 0 (None elsewhere, and where the strategy does
    not carry). Every rank must call it: sharded state is gathered (one all-gather per
    tensor under FSDP2, one gather of each rank's partition under ZeRO). Bytes, so that the
    result crosses process boundaries as plain data."""
    if not carries(strategy):
        return None
    inner = cs.inner_optimizer(optimizer)
    sd = cs._dcp()
    with cs._no_step_hooks(inner):
        if is_zero_optimizer(optimizer):  # each rank: its partition's plain tensors
            local = sd.get_optimizer_state_dict(module, inner, options=_options(cpu_offload=False))
            full = _merge_partitions(_cpu(local), strategy.env.is_main)
        else:  # DTensors gathered; rank 0 alone keeps the CPU copy
            full = sd.get_optimizer_state_dict(module, inner, options=_options(cpu_offload=True))
    zero = is_zero_optimizer(optimizer)
    ema = _merge_ema(_gather_ema(strategy, module, inner, strategy.env.is_main or zero),
                     zero, strategy.env.is_main)
    if ema is not None and strategy.env.is_main:
        full = {**full, EMA_KEY: ema}
    return _pack(full) if strategy.env.is_main else None


def _cpu(osd: dict) -> dict:
    state = {fqn: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v
                   for k, v in s.items()} for fqn, s in osd["state"].items()}
    return {"state": state, "param_groups": osd["param_groups"]}


def _merge_partitions(local: dict, is_main: bool) -> dict | None:
    """ZeRO: every rank's partition to rank 0, as one state over every parameter."""
    parts = [None] * dist.get_world_size() if is_main else None
    dist.gather_object(local, parts, dst=0)
    if not is_main:
        return None
    state, groups = {}, [dict(g, params=[]) for g in parts[0]["param_groups"]]
    for part in parts:
        state.update(part["state"])
        for merged, group in zip(groups, part["param_groups"]):
            merged["params"] += list(group["params"])
    return {"state": state, "param_groups": groups}


def _pack(full: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(full, buffer)
    return buffer.getvalue()


def unpack(packed: bytes) -> dict:
    """What `gather_full` packed (tensors, numbers and strings only: no code is loaded)."""
    return torch.load(io.BytesIO(packed), weights_only=True)


def load_full(strategy, module, optimizer, full: dict) -> None:
    """Load the whole state `full` (every rank holds all of it) into this rank's optimizer:
    its shard of each DTensor, its ZeRO partition, or all of it under DDP. Every rank
    must call it (torch creates missing state with a zero step first)."""
    inner = cs.inner_optimizer(optimizer)
    ema = full.get(EMA_KEY)
    full = {"state": full["state"], "param_groups": _keep_kernels(full["param_groups"], inner)}
    for group, saved in zip(inner.param_groups, full["param_groups"]):
        for k, v in saved.items():  # keys a hook adds at the first step ("keras_step"):
            group.setdefault(k, v)  # torch loads only the keys this rank's groups have
    params = [p for g in inner.param_groups for p in g["params"]]
    if full["state"] and params and not any(p.dim() for p in params):
        _load_scalars(inner, strategy.unwrap(module), full)  # torch's loader cannot
    elif full["state"] and params:
        # not strict: a parameter that got no gradient in the last fit (an unused head, a
        # layer skipped on every step) has no state, and starts afresh, as in one process
        with cs._no_step_hooks(inner):
            cs._dcp().set_optimizer_state_dict(module, inner, full,
                                               options=_options(strict=False))
    else:  # no tensors (SGD without momentum; an empty ZeRO partition): torch needs one
        for group, saved in zip(inner.param_groups, full["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
    if inner is not optimizer:  # ZeRO exposes the global groups; keep lr & co. in step
        optimizer._sync_param_groups(inner.param_groups, optimizer.param_groups)
    if ema is not None:  # after the loads, whose hook marked the average as restarting
        _load_ema(strategy, module, inner, ema)


def _load_scalars(optimizer, net, full: dict) -> None:
    """Load `full` into an optimizer of 0-dim parameters only (a ZeRO partition that got a
    learned temperature alone): torch's full-state loader takes its device from a state
    tensor of at least one dimension and fails without one. Such parameters are plain
    tensors (never sharded), so their state is set by name; "step" stays where torch keeps
    it, on the host."""
    names = _names(net)
    for p in (p for g in optimizer.param_groups for p in g["params"]):
        saved = full["state"].get(names.get(id(p)))
        if saved is not None:
            optimizer.state[p] = {k: v if not torch.is_tensor(v) else v.clone()
                                  if k == "step" else v.to(p.device) for k, v in saved.items()}
    for group, saved in zip(optimizer.param_groups, full["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})


def _keep_kernels(groups: list, optimizer) -> list:
    """The saved groups with this optimizer's kernel choice (fused / foreach): DTensors
    cannot use the fused kernels a plain one-process optimizer picked."""
    kernels = [{k: g[k] for k in cs._KERNEL_KEYS if k in g} for g in optimizer.param_groups]
    if len(kernels) != len(groups):
        return groups
    return [{**g, **kept} for g, kept in zip(groups, kernels)]


def _names(net) -> dict[int, str]:
    return {id(p): name for name, p in net.named_parameters()}


def full_of_plain(optimizer, net) -> dict:
    """A plain (one-process) optimizer over `net`'s parameters in the full layout, on CPU."""
    names, sd = _names(net), optimizer.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    order = [names[id(p)] for p in params]  # state_dict numbers them in this order
    state = {order[i]: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v
                        for k, v in s.items()} for i, s in sd["state"].items()}
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    full = {"state": state, "param_groups": groups}
    if EMA_KEY in sd:  # use_ema's average, by position like the state
        ema = sd[EMA_KEY]
        full[EMA_KEY] = {"steps": ema["steps"], "average": {
            order[int(i)]: v.detach().cpu().clone() for i, v in ema["average"].items()}}
    return full


def load_into_plain(optimizer, net, full: dict) -> bool:
    """Load `full` into a fresh plain optimizer over `net`; False (nothing loaded) where
    its parameters or groups do not match."""
    names = _names(net)
    groups = optimizer.param_groups
    if len(groups) != len(full["param_groups"]):
        return False
    index, state, out_groups, i = {}, {}, [], 0
    for group, saved in zip(groups, _keep_kernels(full["param_groups"], optimizer)):
        ids = []
        for p in group["params"]:
            index[names.get(id(p))] = i
            ids.append(i)
            i += 1
        out_groups.append({**saved, "params": ids})
    if None in index or any(fqn not in index for fqn in full["state"]):
        return False
    for fqn, s in full["state"].items():
        state[index[fqn]] = s
    plain = {"state": state, "param_groups": out_groups}
    if EMA_KEY in full:  # taken by the average's load hook (update_rules.EmaState)
        ema = full[EMA_KEY]
        plain[EMA_KEY] = {"steps": ema["steps"], "average": {
            index[fqn]: v for fqn, v in ema["average"].items() if fqn in index}}
    optimizer.load_state_dict(plain)
    return True


def _params(optimizer) -> list:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _gather_ema(strategy, module, inner, keep: bool) -> dict | None:
    """This rank's view of the whole average, on CPU: under DDP and ZeRO the average of
    each parameter it steps, under DTensors (FSDP2, tensor parallel) every parameter's
    average made whole (one all-gather per parameter: every rank must call it; a rank
    that does not `keep` the copies takes part and drops them). None without use_ema, or
    where the average restarts and has not stepped yet."""
    from torch.distributed.tensor import DTensor
    ema = getattr(inner, "_bigtrain_ema", None)
    if ema is None or ema.restarts or not ema.steps:
        return None  # the same on every rank: they step together
    names, average = _names(strategy.unwrap(module)), {}
    for p in _params(inner):
        avg = ema.average.get(p)
        if avg is not None and isinstance(p, DTensor):  # avg: this rank's shard
            avg = DTensor.from_local(avg, p.device_mesh, p.placements, shape=p.shape,
                                     stride=p.stride()).full_tensor()
        if avg is not None and keep and id(p) in names:
            average[names[id(p)]] = avg.detach().cpu().clone()
    return {"steps": ema.steps, "average": average}


def _merge_ema(local: dict | None, zero: bool, is_main: bool) -> dict | None:
    """ZeRO: every rank's partition of the average to rank 0 (others hold all of it)."""
    if not zero:
        return local
    parts = [None] * dist.get_world_size() if is_main else None
    dist.gather_object(local, parts, dst=0)
    if not is_main or any(part is None for part in parts):
        return None
    return {"steps": parts[0]["steps"],
            "average": {k: v for part in parts for k, v in part["average"].items()}}


def _load_ema(strategy, module, inner, saved: dict) -> None:
    """Give this rank's EmaState its share of the carried average: each parameter's
    average cut as the parameter is (no communication: every rank holds all of it)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    ema = getattr(inner, "_bigtrain_ema", None)
    if ema is None:
        return
    names, average = _names(strategy.unwrap(module)), {}
    for i, p in enumerate(_params(inner)):
        avg = saved["average"].get(names.get(id(p)))
        if avg is None:
            return  # an average over other parameters: it restarts (and says so)
        if isinstance(p, DTensor):
            avg = distribute_tensor(avg.to(p.device_mesh.device_type), p.device_mesh,
                                    p.placements, src_data_rank=None).to_local()
        average[i] = avg
    ema.load_from(inner, {EMA_KEY: {"steps": int(saved["steps"]), "average": average}})
