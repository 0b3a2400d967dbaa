"""Layers that declare how tensor parallelism splits them (conv channels, attention heads).

`tensor_parallel.tp_plan` shards Linears by their names; a layer whose weights are not
Linears (a Keras Conv2D, MultiHeadAttention) subclasses `SplitsItself` instead: it says
whether it can split `degree` ways exactly (`tp_split`) and shards its own weights as
DTensors on the tensor-parallel mesh (`tp_apply`), computing on the local shards with the
collectives below. What it cannot split stays replicated, and `tp_split` says why.

    conv, output channels split (Megatron's column-wise with a gather):
        x -> copy_to_tp -> conv(x, W[rank's channels]) -> gather_from_tp(channel axis)
    attention, heads split (column-wise q/k/v, row-wise output projection):
        x -> copy_to_tp -> q, k, v of the rank's heads -> attention -> o @ W_o[rank's heads]
          -> reduce_from_tp -> + output bias

Each rank computes the same replicated output as one process (up to the summation order of
one all-reduce); weight gradients stay on their shards (DTensor), input gradients are summed.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class SplitsItself:
    """A layer that declares its own tensor-parallel split (mixed into an nn.Module)."""

    def tp_split(self, degree: int) -> str | None:
        """None when the layer splits `degree` ways exactly, else why it stays replicated."""
        return "this layer does not split"

    def tp_apply(self, tp_mesh) -> None:
        """Shard this layer's weights over the 1-D `tp_mesh` (after `tp_split` said None)."""
        raise NotImplementedError(
            f"{type(self).__name__}.tp_split says it splits, so it must define tp_apply "
            "(shard its own weights, e.g. with shard_param)")


def shard_param(module: torch.nn.Module, name: str, tp_mesh, dim: int) -> None:
    """Replace parameter `name` by a DTensor sharded on `dim` (each rank keeps its slice of
    the full tensor, which every rank holds identically before the split)."""
    from torch.distributed.tensor import Shard, distribute_tensor
    full = getattr(module, name)
    sharded = distribute_tensor(full.data, tp_mesh, [Shard(dim)])
    setattr(module, name, torch.nn.Parameter(sharded, requires_grad=full.requires_grad))


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (differentiable), any other tensor as is."""
    return t.to_local() if hasattr(t, "to_local") else t


class _CopyToTP(torch.autograd.Function):
    """Identity in forward; all-reduce(sum) of the input gradient in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce(sum) of partial outputs in forward; identity in backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    """All-gather of the ranks' slices along `dim` in forward; in backward each rank keeps
    the gradient of its own slice (the loss after the gather is the same on every rank)."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.rank = dim, dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.size = x.shape[dim]
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size), None, None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _ReduceFromTP.apply(x, group)


def gather_from_tp(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _GatherFromTP.apply(x, dim, group)
