"""Hybrid parallelism: data x tensor x pipeline on one device mesh.

`Hybrid(dp=2, tp=2)`, `Hybrid(dp=2, pp=2)` and `Hybrid(pp=2, tp=2)` are arguments: the
degrees (one `ParallelDims`, validated against the world size before any process group) and
the options of the pipeline or tensor-parallel strategy that runs them. That strategy builds
the mesh once (bigtrain.parallel.dims.Topology) and composes the model with
bigtrain.parallel.parallelize in its one order: pipeline -> tensor -> activation
checkpointing -> data parallel.

With pp > 1 the step is owned by the pipeline schedule; otherwise the engine's step
(bigtrain.engine.step) runs on the tensor-parallel model with its hooks.

Example:
    model.fit(x, y, strategy=Hybrid(dp=2, tp=2), devices=4)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from bigtrain.parallel.base import Strategy
from bigtrain.parallel.dims import ParallelDims
from bigtrain.parallel.pipeline import Pipeline
from bigtrain.parallel.tensor_parallel import TensorParallel


class Hybrid(Strategy):
    """Data, tensor and pipeline parallelism combined.

    Args:
        dp: data-parallel replicas; None: the world size / (tp * pp).
        tp: tensor-parallel degree.
        pp: pipeline degree (ranks per pipeline).
        microbatches: pipeline micro-batches per step (pp > 1).
        schedule: pipeline schedule name (pp > 1), see Pipeline.
        split: layers per pipeline stage, overriding the measured balance.
        plan: tensor-parallel regex -> style overrides (pp == 1).
        activation_checkpointing: recompute each block's activations in backward.

    Example:
        Hybrid(dp=2, pp=2, microbatches=4, schedule="gpipe")
    """

    name = "hybrid"

    def __init__(self, dp: int | None = None, tp: int = 1, pp: int = 1, microbatches: int = 4,
                 schedule: str = "1f1b", split: Sequence[int] | None = None,
                 plan: Mapping[str, str] | None = None, activation_checkpointing: bool = False):
        super().__init__()
        if dp is not None:
            ParallelDims(dp=dp, tp=tp, pp=pp)  # degrees are integers >= 1
        if plan and pp > 1:
            raise ValueError("Hybrid(plan=...) applies to tensor parallelism without a "
                             "pipeline; drop plan or set pp=1")
        self.dp, self.tp, self.pp = dp, tp, pp
        if pp > 1:
            self.inner: Strategy = Pipeline(
                stages=pp, microbatches=microbatches, schedule=schedule, split=split, tp=tp,
                activation_checkpointing=activation_checkpointing)
        else:
            self.inner = TensorParallel(degree=tp, plan=plan,
                                        activation_checkpointing=activation_checkpointing)

    def dims(self, world_size: int) -> ParallelDims:
        """The validated degrees on `world_size` processes."""
        if self.dp is None:
            return ParallelDims.infer(world_size, tp=self.tp, pp=self.pp)
        return ParallelDims(dp=self.dp, tp=self.tp, pp=self.pp, world_size=world_size)

    def num_processes(self, devices):
        return (self.dp or 1) * self.tp * self.pp if devices is None else int(devices)

    @property
    def owns_step(self) -> bool:
        return self.inner.owns_step  # pp > 1: the pipeline schedule runs the step

    @property
    def supports_loss_scaling(self) -> bool:
        return self.inner.supports_loss_scaling

    def checkpoint_names(self, module):
        return self.inner.checkpoint_names(module)

    def validate(self, world_size: int, global_batch_size: int) -> None:
        self.dims(world_size)
        self.inner.validate(world_size, global_batch_size)

    def check_model(self, module: nn.Module, world_size: int) -> None:
        self.inner.check_model(module, world_size)

    def setup(self, env) -> None:
        super().setup(env)
        self.dims(env.world_size)
        self.inner.setup(env)

    def setup_module(self, module: nn.Module) -> nn.Module:
        return self.inner.setup_module(module)

    def setup_optimizer(self, module, make_optimizer):
        return self.inner.setup_optimizer(module, make_optimizer)

    def data_shard(self) -> tuple[int, int]:
        return self.inner.data_shard()

    # the step's hooks are the inner strategy's; the StepContext passes through
    def no_sync(self, module):
        return self.inner.no_sync(module)

    def backward(self, loss: torch.Tensor) -> None:
        self.inner.backward(loss)

    def sync_grads(self, module, optimizer, batch, ctx) -> None:
        self.inner.sync_grads(module, optimizer, batch, ctx)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, ctx) -> None:
        self.inner.optimizer_step(optimizer, ctx)

    def train_step(self, module, optimizer, batch, compute_loss, autocast, ctx=None):
        return self.inner.train_step(module, optimizer, batch, compute_loss, autocast, ctx)

    @property
    def timing_note(self) -> str:
        return self.inner.timing_note

    def stats(self) -> dict:
        return self.inner.stats()

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return self.inner.full_state_dict(module)

    def teardown(self) -> None:
        self.inner.teardown()

    def refuse_update_rules(self, rules) -> str | None:
        return self.inner.refuse_update_rules(rules)

    def describe(self) -> str:
        return f"dp={self.dp or 'auto'}, tp={self.tp}, pp={self.pp}; {self.inner.describe()}"

    def __eq__(self, other):
        return (type(self) is type(other) and (self.dp, self.tp, self.pp) ==
                (other.dp, other.tp, other.pp) and self.inner == other.inner)
