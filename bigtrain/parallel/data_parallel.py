"""Data parallel: every rank holds the whole model, reads its own share of each global
batch, and gradients are averaged with DistributedDataParallel (bucketed all-reduce,
overlapped with backward).

A trainable parameter the forward never uses (an unused layer) would stop DDP at the second
step: setup finds such parameters on the fit's first rows and turns on
find_unused_parameters with a warning, and the first step names any it missed before an
update (bigtrain.parallel.unused_params).

    fit(..., strategy="ddp", devices=2)   # or strategy=DataParallel()
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from bigtrain.parallel.base import Strategy, register
from bigtrain.parallel.parallelize import parallelize
from bigtrain.parallel.unused_params import no_grad_error, unreached, unused_warning, \
    without_grad


def check_batch_covers_ranks(name: str, world_size: int, global_batch_size: int) -> None:
    if global_batch_size < world_size:
        raise ValueError(f"batch_size={global_batch_size} is the global batch and is smaller than "
                         f"the {world_size} ranks of strategy {name!r}: every rank needs at least "
                         f"one sample; use batch_size >= {world_size} or fewer devices")


class DataParallel(Strategy):
    """DistributedDataParallel over all ranks.

    Args:
        bucket_cap_mb: gradient bucket size for the overlapped all-reduce.
        find_unused_parameters: set for models whose forward skips some parameters (turned
            on by itself, with a warning, where the fit's first rows show such parameters).
    """

    name = "ddp"
    syncs_in_backward = True
    wants_input_sample = True  # to find unused parameters before DDP is built
    timing_note = ("DDP all-reduces gradient buckets during backward; comm_exposed is the "
                   "part backward waits for at its end")

    def __init__(self, bucket_cap_mb: int = 25, find_unused_parameters: bool = False):
        super().__init__()
        self.bucket_cap_mb = bucket_cap_mb
        self.find_unused_parameters = find_unused_parameters
        self._sample = None  # the fit's first input rows (use_input_sample), until setup
        self._check_grads = False  # the first step still has to look for missing gradients

    def validate(self, world_size: int, global_batch_size: int) -> None:
        check_batch_covers_ranks(self.name, world_size, global_batch_size)

    def use_input_sample(self, x) -> None:
        self._sample = x

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.env.device)
        sample, self._sample = self._sample, None
        if not self.env.distributed:
            return module
        find = self.find_unused_parameters or self._finds_unused(module, sample)
        self._check_grads = not find
        (module,) = parallelize(module, None, replicate=functools.partial(self._ddp, find=find))
        return module

    def _finds_unused(self, module: nn.Module, sample) -> bool:
        """Whether a forward of `sample` (None: no rows) leaves a trainable parameter
        without a gradient on some rank (one all-reduce of a flag: every rank must build
        DDP alike); rank 0 warns with the names and the cost."""
        names = []
        if sample is not None:
            try:
                names = unreached(module, sample)
            except Exception:  # noqa: BLE001 - a forward the rows do not fit: the first
                names = []     # step's check still names missing gradients
        if names and self.env.is_main:
            warnings.warn(unused_warning(self.name, names), stacklevel=3)
        flag = torch.tensor([float(bool(names))], device=self.env.device)
        return bool(self.all_reduce(flag, "max").item())

    def _ddp(self, module: nn.Module, find: bool) -> DDP:
        ids = [self.env.device] if self.env.device.type == "cuda" else None
        return DDP(module, device_ids=ids, bucket_cap_mb=self.bucket_cap_mb,
                   find_unused_parameters=find)

    def sync_grads(self, module, optimizer, batch, ctx) -> None:
        """DDP averaged in backward; after the first step's, a trainable parameter without a
        gradient (every rank sees the same ones) stops the fit before any update."""
        if self._check_grads:
            self._check_grads = False
            names = without_grad(module.module if isinstance(module, DDP) else module)
            if names:
                raise RuntimeError(no_grad_error(self.name, names))

    def no_sync(self, module: nn.Module):
        return module.no_sync() if isinstance(module, DDP) else super().no_sync(module)

    def describe(self) -> str:
        return f"ddp, bucket {self.bucket_cap_mb} MB"


register("ddp", DataParallel)
register("data_parallel", DataParallel)
