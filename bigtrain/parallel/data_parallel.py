"""Data parallel: every rank holds the whole model, reads its own share of each global
batch, and gradients are averaged with DistributedDataParallel (bucketed all-reduce,
overlapped with backward).

    fit(..., strategy="ddp", devices=2)   # or strategy=DataParallel()
"""
from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from bigtrain.parallel.base import Strategy, register
from bigtrain.parallel.parallelize import parallelize


def check_batch_covers_ranks(name: str, world_size: int, global_batch_size: int) -> None:
    if global_batch_size < world_size:
        raise ValueError(f"batch_size={global_batch_size} is the global batch and is smaller than "
                         f"the {world_size} ranks of strategy {name!r}: every rank needs at least "
                         f"one sample; use batch_size >= {world_size} or fewer devices")


class DataParallel(Strategy):
    """DistributedDataParallel over all ranks.

    Args:
        bucket_cap_mb: gradient bucket size for the overlapped all-reduce.
        find_unused_parameters: set for models whose forward skips some parameters.
    """

    name = "ddp"
    syncs_in_backward = True
    timing_note = ("DDP all-reduces gradient buckets during backward; comm_exposed is the "
                   "part backward waits for at its end")

    def __init__(self, bucket_cap_mb: int = 25, find_unused_parameters: bool = False):
        super().__init__()
        self.bucket_cap_mb = bucket_cap_mb
        self.find_unused_parameters = find_unused_parameters

    def validate(self, world_size: int, global_batch_size: int) -> None:
        check_batch_covers_ranks(self.name, world_size, global_batch_size)

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.env.device)
        if not self.env.distributed:
            return module
        (module,) = parallelize(module, None, replicate=self._ddp)
        return module

    def _ddp(self, module: nn.Module) -> DDP:
        ids = [self.env.device] if self.env.device.type == "cuda" else None
        return DDP(module, device_ids=ids, bucket_cap_mb=self.bucket_cap_mb,
                   find_unused_parameters=self.find_unused_parameters)

    def no_sync(self, module: nn.Module):
        return module.no_sync() if isinstance(module, DDP) else super().no_sync(module)

    def describe(self) -> str:
        return f"ddp, bucket {self.bucket_cap_mb} MB"


register("ddp", DataParallel)
register("data_parallel", DataParallel)
