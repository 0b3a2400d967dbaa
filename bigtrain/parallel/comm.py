"""The collectives the strategies share, each written once.

Every function here is called by all ranks of its group together (a rank that skips one
hangs the others). `group=None` means the whole job (the default process group).

    all_reduce_grads(params, group)        all-reduce(sum) of flat gradient buckets, / size
    broadcast_params(params, group)        broadcast from the group's first rank
    broadcast_module(module)               broadcast of every parameter and buffer
    all_reduce(tensor, "max", group)       all-reduce with the op named as a string

Example:
    loss.backward()
    all_reduce_grads(model.parameters(), dp_group)     # data-parallel average
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

#: reduction names accepted by `all_reduce` (and `Strategy.all_reduce`)
REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(tensor: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """Reduce `tensor` in place over `group` with the op named `op` (see REDUCE_OPS)."""
    dist.all_reduce(tensor, op=REDUCE_OPS[op], group=group)
    return tensor


def all_reduce_grads(params: Iterable[nn.Parameter], group=None, average: bool = True,
                     materialize: bool = False, bucket_bytes: int | None = None) -> None:
    """Sum (or average) gradients over `group` with a few flat all-reduces.

    Collective: all-reduce(sum) over `group` of flat buckets holding the local gradients
    (a DTensor's local shard for tensor-parallel weights), issued back to back, then each
    bucket is divided by the group size (`average`) and copied back.

    Args:
        params: parameters whose `.grad` to synchronise (None grads are skipped).
        group: the process group (e.g. the data-parallel sub-mesh's group); None: all ranks.
        average: divide by the group size after summing (data-parallel averaging).
        materialize: give parameters without a gradient a zero one first, so every rank
            contributes the same buffer (ranks that skip None grads must all skip the same);
            a parameter no rank had a gradient for gets None back, as one process leaves
            it (an optimizer skips it: a zero gradient would still decay it and move it
            by its momentum, and Ftrl would reset it).
        bucket_bytes: largest bucket in bytes; None: one bucket per dtype.
    """
    size = dist.get_world_size(group)
    if size == 1:
        return
    params = list(params)
    present = None
    if materialize and params:
        # (n,) 1.0 where this rank has a gradient, summed with the gradients' own buckets
        present = torch.tensor([float(p.grad is not None) for p in params],
                               device=_local(params[0]).device)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    grads = [_local(p.grad) for p in params if p.grad is not None]
    buckets = _buckets(grads + ([present] if present is not None else []), bucket_bytes)
    flats = [_flatten_dense_tensors(b) for b in buckets]
    works = [dist.all_reduce(f, group=group, async_op=True) for f in flats]
    for bucket, flat, work in zip(buckets, flats, works):
        work.wait()
        if average:
            flat.div_(size)
        for g, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            g.copy_(reduced)
    if present is not None:
        for p, some_rank in zip(params, present.tolist()):
            if not some_rank:
                p.grad = None


def _buckets(grads: list[torch.Tensor], cap: int | None) -> list[list[torch.Tensor]]:
    """Gradients grouped by dtype (a flat buffer has one), each group cut at `cap` bytes."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    out = []
    for same in by_dtype.values():
        current, size = [], 0
        for g in same:
            if current and cap is not None and size + g.nbytes > cap:
                out.append(current)
                current, size = [], 0
            current.append(g)
            size += g.nbytes
        out.append(current)
    return out


def broadcast_params(params: Iterable[torch.Tensor], group=None, src_group_rank: int = 0) -> None:
    """Copy tensors from one rank of `group` to the others (collective: broadcast each)."""
    group = group if group is not None else dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return
    src = dist.get_global_rank(group, src_group_rank)
    with torch.no_grad():
        for p in params:
            dist.broadcast(_local(p.data), src=src, group=group)


def broadcast_module(module: nn.Module, group=None) -> None:
    """Make every rank's parameters and buffers equal to the group's first rank's (as DDP
    does at construction)."""
    broadcast_params([*module.parameters(), *module.buffers()], group)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t
