"""Process-group plumbing shared by every strategy: joining a job started by a launcher,
the local single-process environment, devices and threads per rank."""
from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from bigtrain.parallel.base import DistEnv

DEFAULT_TIMEOUT_S = 300.0  # collectives fail after this instead of gloo's 30 minutes


def launched_externally() -> bool:
    """True inside a job started by torchrun / `bigtrain run` (or a fit-launched worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)


def is_main_process() -> bool:
    """True on global rank 0, and in a plain single-process run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def resolve_devices(devices) -> int | None:
    """Number of processes for `devices` (None, an int, "auto", "cpu", "cuda")."""
    if devices is None or devices == "cpu":
        return None
    if devices == "auto":
        return torch.cuda.device_count() or None
    if devices == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("devices='cuda' but no CUDA device is available; use devices=N "
                             "for N CPU processes")
        return torch.cuda.device_count()
    if isinstance(devices, int) and devices >= 1:
        return devices
    raise ValueError(f"devices must be a positive integer, 'auto', 'cpu' or 'cuda', got {devices!r}")


def device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def threads_per_rank(local_world_size: int) -> int:
    """Cores split evenly between the ranks of this host (at least one each)."""
    return max(1, (os.cpu_count() or 1) // max(1, local_world_size))


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_env() -> DistEnv:
    return DistEnv(device=device_for(0))


def join_existing_job(timeout_s: float | None = None, set_threads: bool = True) -> DistEnv:
    """Join (or reuse) the process group of a launched job; returns this rank's DistEnv."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = device_for(local_rank)
    if set_threads and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_per_rank(local_world))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s or DEFAULT_TIMEOUT_S))
        atexit.register(_destroy_group)  # the user's script goes on after fit; tidy up at exit
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank,
                   local_world_size=local_world, device=device)
