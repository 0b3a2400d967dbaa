"""Cost model and planner: memory per rank, step time, and which strategy to use.

Example:
    from bigtrain.plan import plan
    p = plan(model, devices=4, batch_size=256)
    print(p.best.strategy)        # e.g. "ddp"
    print(p.table(markdown=True))
"""
from bigtrain.plan.cost import (StepTime, pipeline_bubble, reduce_scatter_bytes,
                                ring_allreduce_bytes, step_time, training_flops)
from bigtrain.plan.device import DeviceSpec, cpu_device, measure_cpu_device
from bigtrain.plan.kernels import KernelProbe
from bigtrain.plan.memory import (PRECISIONS, STRATEGIES, MemoryBreakdown, Precision,
                                  activation_bytes, model_state_bytes, optimizer_bytes,
                                  ps_server_bytes)
from bigtrain.plan.planner import Plan, StrategyEstimate, plan
from bigtrain.plan.profile import ModelProfile, count_params, profile_module
from bigtrain.plan.report import format_bytes, format_seconds

__all__ = [
    "DeviceSpec", "KernelProbe", "MemoryBreakdown", "ModelProfile", "PRECISIONS", "Plan",
    "Precision", "STRATEGIES", "StepTime", "StrategyEstimate", "activation_bytes", "count_params",
    "cpu_device", "format_bytes", "format_seconds", "measure_cpu_device", "model_state_bytes",
    "optimizer_bytes", "pipeline_bubble", "plan", "profile_module", "ps_server_bytes",
    "reduce_scatter_bytes", "ring_allreduce_bytes", "step_time", "training_flops",
]
