"""Hybrid parallelism: data x tensor x pipeline on one device mesh.

`Hybrid(dp=2, tp=2)`, `Hybrid(dp=2, pp=2)` and `Hybrid(pp=2, tp=2)` are arguments: the
degrees (one `ParallelDims`, validated against the world size before any process group) and
the options of the strategy that runs them. A Hybrid *is* that strategy: with pp > 1 a
Pipeline (whose schedule owns the step, tensor parallelism inside each stage), else a
TensorParallel (the engine's step with its hooks). Both build the mesh once
(bigtrain.parallel.dims.Topology) and compose the model with bigtrain.parallel.parallelize in
its one order: pipeline -> tensor -> activation checkpointing -> data parallel. Hybrid adds
only the degrees: `dims`, the process count and the description; every hook is inherited,
none forwarded.

Example:
    model.fit(x, y, strategy=Hybrid(dp=2, tp=2), devices=4)
"""
from __future__ import annotations

from typing import Mapping, Sequence

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

    `Hybrid(...)` makes a `PipelineHybrid` (pp > 1) or a `TensorHybrid`: a Hybrid and a
    Pipeline or TensorParallel at once.

    Example:
        Hybrid(dp=2, pp=2, microbatches=4, schedule="gpipe")
    """

    name = "hybrid"

    def __new__(cls, *args, **kwargs):
        if cls is Hybrid:  # pickling calls __new__ on the concrete class, without arguments
            pp = kwargs.get("pp", args[2] if len(args) > 2 else 1)
            cls = PipelineHybrid if isinstance(pp, int) and pp > 1 else TensorHybrid
        return super().__new__(cls)

    def __init__(self, dp: int | None = None, tp: int = 1, pp: int = 1, microbatches: int = 4,
                 schedule: str = "1f1b", split: Sequence[int] | None = None,
                 plan: Mapping[str, str] | None = None, activation_checkpointing: bool = False):
        ParallelDims(dp=1 if dp is None else dp, tp=tp, pp=pp)  # degrees are integers >= 1
        if plan and pp > 1:
            raise ValueError("Hybrid(plan=...) applies to tensor parallelism without a "
                             "pipeline; drop plan or set pp=1")
        if isinstance(self, Pipeline):
            Pipeline.__init__(self, stages=pp, microbatches=microbatches, schedule=schedule,
                              split=split, tp=tp,
                              activation_checkpointing=activation_checkpointing)
        else:
            TensorParallel.__init__(self, degree=tp, plan=plan,
                                    activation_checkpointing=activation_checkpointing)
        self.dp, self.tp, self.pp = dp, tp, pp

    def dims(self, world_size: int) -> ParallelDims:
        """The validated degrees on `world_size` processes (the inherited checks use it)."""
        if self.dp is None:
            return ParallelDims.infer(world_size, tp=self.tp, pp=self.pp)
        return ParallelDims(dp=self.dp, tp=self.tp, pp=self.pp, world_size=world_size)

    def num_processes(self, devices):
        return (self.dp or 1) * self.tp * self.pp if devices is None else int(devices)

    def validate(self, world_size: int, global_batch_size: int) -> None:
        self.dims(world_size)
        super().validate(world_size, global_batch_size)

    def setup(self, env) -> None:
        self.dims(env.world_size)
        super().setup(env)

    def describe(self) -> str:
        return f"dp={self.dp or 'auto'}, tp={self.tp}, pp={self.pp}; {super().describe()}"

    def __repr__(self):
        return f"Hybrid({self.describe()})"

    def __eq__(self, other):
        return super().__eq__(other) and (self.dp, self.tp, self.pp) == (
            other.dp, other.tp, other.pp)


class PipelineHybrid(Hybrid, Pipeline):
    """Hybrid with pp > 1: a Pipeline over the (dp, tp, pp) mesh."""


class TensorHybrid(Hybrid, TensorParallel):
    """Hybrid with pp == 1: a TensorParallel over the (dp, tp) mesh."""
