"""Ways of splitting the work, behind one Strategy interface and a registry of names.

    fit(..., strategy="ddp")  ==  fit(..., strategy=DataParallel())
"""
from bigtrain.parallel.base import DistEnv, Shard, StepBatch, Strategy, register, \
    resolve_strategy, strategy_names
from bigtrain.parallel.balanced import BalancedDataParallel
from bigtrain.parallel.cpu_optimizer import CpuOptimizerDataParallel, HostOptimizer
from bigtrain.parallel.data_parallel import DataParallel
from bigtrain.parallel.dims import ParallelDims
from bigtrain.parallel.hybrid import Hybrid
from bigtrain.parallel.parameter_server import ParameterServer
from bigtrain.parallel.pipeline import Pipeline
from bigtrain.parallel.sharded import Sharded
from bigtrain.parallel.tensor_parallel import TensorParallel
from bigtrain.parallel.zero1 import Zero1

__all__ = ["BalancedDataParallel", "CpuOptimizerDataParallel", "HostOptimizer", "Shard",
           "DataParallel", "DistEnv", "Hybrid", "ParallelDims", "ParameterServer", "Pipeline", "Sharded", "StepBatch",
           "Strategy", "TensorParallel", "Zero1", "register", "resolve_strategy", "strategy_names"]
