"""Ways of splitting the work, behind one Strategy interface and a registry of names.

    fit(..., strategy="ddp")  ==  fit(..., strategy=DataParallel())

The strategy classes load on first use (`bigtrain.parallel.Sharded` imports FSDP then), so
that a process which trains with DDP or on one device never imports DTensor or the pipeline.
"""
import importlib

from bigtrain.parallel.base import DistEnv, Shard, StepBatch, Strategy, register, \
    resolve_strategy, strategy_names

_LAZY = {
    "BalancedDataParallel": "bigtrain.parallel.balanced",
    "CpuOptimizerDataParallel": "bigtrain.parallel.cpu_optimizer",
    "HostOptimizer": "bigtrain.parallel.cpu_optimizer",
    "DataParallel": "bigtrain.parallel.data_parallel",
    "ParallelDims": "bigtrain.parallel.dims",
    "Hybrid": "bigtrain.parallel.hybrid",
    "ParameterServer": "bigtrain.parallel.parameter_server",
    "Pipeline": "bigtrain.parallel.pipeline",
    "Sharded": "bigtrain.parallel.sharded",
    "TensorParallel": "bigtrain.parallel.tensor_parallel",
    "Zero1": "bigtrain.parallel.zero1",
}

__all__ = sorted([*_LAZY, "DistEnv", "Shard", "StepBatch", "Strategy", "register",
                  "resolve_strategy", "strategy_names"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bigtrain.parallel' has no attribute {name!r}")


def __dir__():
    return __all__
