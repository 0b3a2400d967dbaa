"""Tensor parallelism: each Linear's weight split over `degree` ranks with DTensor.

The plans (which Linear is split how: Megatron's column-wise -> row-wise pairs) live in
bigtrain.parallel.tensor_plan; a model may declare its own there. For a GPT block:

    GPT block:  attn.q_proj / k_proj / v_proj  colwise   (heads split: nh / T per rank)
                attn.c_proj                    rowwise   (all-reduce -> replicated x)
                mlp.c_fc                       colwise   (4C / T per rank)
                mlp.c_proj                     rowwise
                embeddings, LayerNorms, tied lm_head: replicated

    chain of Linears (e.g. 1000 -> 512 relu -> 10):  colwise, rowwise, colwise, ...
    functional graph: a pair only where the row-wise Dense alone reads the colwise one's
        output (a Dense feeding two heads or a skip connection gathers its output instead)

The model is composed by bigtrain.parallel.parallelize (TP, then activation checkpointing,
then the data-parallel replicas over the remaining ranks).

`plan={"regex": "colwise" | "colwise_gather" | "rowwise" | "replicate"}` overrides the
style of the Linears whose qualified name matches (re.search, like Keras's LayoutMap).

Example:
    strategy = TensorParallel(degree=2)                      # or fit(strategy="tensor")
    strategy = TensorParallel(degree=2, plan={r"mlp\\.c_fc": "replicate"})
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from bigtrain.parallel.base import Strategy, register
from bigtrain.parallel.dims import ParallelDims, Topology
from bigtrain.parallel.full_state_load import load_full_into
from bigtrain.parallel.parallelize import parallelize, sync_grads
from bigtrain.parallel.sharded import shard_safe
from bigtrain.parallel.tensor_plan import (STYLES, apply_tp, check_styles,  # noqa: F401
                                           check_tp, full_tensor_state_dict, tp_plan)


class TensorParallel(Strategy):
    """Megatron-style tensor parallelism on DTensor; extra ranks become data-parallel.

    With world size W and degree T, W / T replicas each shard the model T ways; replicas
    average gradients with one all-reduce per step over the "dp" mesh dimension.

    Args:
        degree: tensor-parallel degree T (W must be a multiple of it); None: the world size.
        plan: optional regex -> style overrides (see module docstring).
        activation_checkpointing: recompute each block's activations in backward.

    Example:
        model.fit(x, y, strategy=TensorParallel(degree=2), devices=2)
    """

    name = "tensor_parallel"
    # GradScaler's unscale (a foreach kernel over the grads) has no DTensor rule: float16
    # would fail inside the first optimizer step, so it is refused before launch
    supports_loss_scaling = False

    def __init__(self, degree: int | None = None, plan: Mapping[str, str] | None = None,
                 activation_checkpointing: bool = False):
        super().__init__()
        if degree is not None and (not isinstance(degree, int) or degree < 1):
            raise ValueError(f"TensorParallel degree must be an integer >= 1, got {degree!r}")
        self.degree = degree
        self.plan = dict(check_styles(plan))
        self.activation_checkpointing = activation_checkpointing
        self.topo: Topology | None = None  # this rank's mesh, built in setup

    def num_processes(self, devices):
        return (self.degree or 1) if devices is None else int(devices)

    def _degree(self, world_size: int) -> int:
        return world_size if self.degree is None else self.degree

    def dims(self, world_size: int) -> ParallelDims:
        """tp = the degree (the world size when None); the other ranks are replicas."""
        return ParallelDims.infer(world_size, tp=self._degree(world_size))

    def validate(self, world_size: int, global_batch_size: int) -> None:
        self.dims(world_size).replica_batch(global_batch_size)

    def check_model(self, module: nn.Module, world_size: int) -> None:
        degree = self._degree(world_size)
        check_tp(module, degree)
        if self.plan and degree > 1:  # an override that cannot apply: before any rank starts
            tp_plan(module, degree, self.plan)

    def setup(self, env) -> None:
        super().setup(env)
        self.topo = Topology(self.dims(env.world_size), env.rank, env.device.type,
                             distributed=env.distributed)

    def setup_module(self, module: nn.Module) -> nn.Module:
        check_tp(module, self._degree(self.env.world_size))  # same error on every rank, first
        module = module.to(self.env.device)
        (module,) = parallelize(module, self.topo, tp_overrides=self.plan,
                                activation_checkpointing=self.activation_checkpointing)
        return module

    def setup_optimizer(self, module, make_optimizer):
        # split weights are DTensors; a refusal names this strategy ("tensor (degree=2)")
        return shard_safe(make_optimizer(module.parameters()), f"tensor ({self.describe()})")

    def data_shard(self) -> tuple[int, int]:
        if self.topo is None or self.topo.mesh is None:
            return (0, 1)
        return self.topo.data_shard()

    def sync_grads(self, module, optimizer, batch, ctx) -> None:
        if self.topo is not None and self.topo.mesh is not None:
            ctx.mark("gradient all-reduce (dp)", phase="comm")
            sync_grads([p for g in optimizer.param_groups for p in g["params"]], self.topo)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return full_tensor_state_dict(self.unwrap(module))

    def load_full_state_dict(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Every rank holds the same full `state`; each keeps its shards (no collective)."""
        load_full_into(self.unwrap(module), state)

    def teardown(self) -> None:
        self.topo = None

    timing_note = ("comm_exposed is the data-parallel gradient all-reduce; the tensor-parallel "
                   "collectives inside the layers are counted in forward and backward")

    def describe(self) -> str:
        return f"degree={self.degree or 'world'}" + (f", plan={self.plan}" if self.plan else "")

    def __eq__(self, other):
        return (type(self) is type(other) and self.degree == other.degree
                and self.plan == other.plan
                and self.activation_checkpointing == other.activation_checkpointing)


# degree=None: as many shards as processes (resolved in validate/setup)
register("tensor", TensorParallel)
register("tensor_parallel", TensorParallel)
