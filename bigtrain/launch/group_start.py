"""Start the default process group so that every rank agrees it is up.

gloo's full-mesh connect now and then fails on one rank of a loaded host ("Gloo
connectFullMesh failed ... Connection closed by peer") while the other ranks' connects
succeed. Those ranks then wait in their first collective until it times out, and the job
dies minutes later with an error that names the wrong place. `start_group` has each rank post
through the rendezvous store whether its own set-up worked and wait for the others' word; if
any failed, every rank drops its group and all try again under a fresh store prefix.
"""
from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

SETUP_TRIES = 3


def start_group(backend: str, store, rank: int, world_size: int, timeout: timedelta,
                tag: str = "bigtrain-group", tries: int = SETUP_TRIES) -> None:
    """`dist.init_process_group(backend, store=..., ...)`, tried again on every rank when the
    connect fails on any (up to `tries` times).

    A rank whose set-up hangs fails after `timeout`, so one try never waits much longer.
    The last failure is raised as a RuntimeError that says how many tries were made.

    Example:
        start_group("gloo", store, rank, world, timedelta(seconds=60))
    """
    error: Exception | None = None
    for attempt in range(tries):
        prefix = f"{tag}/try{attempt}"
        error = None
        try:
            dist.init_process_group(backend, store=dist.PrefixStore(prefix, store), rank=rank,
                                    world_size=world_size, timeout=timeout)
        except RuntimeError as e:
            error = e
        store.set(f"{prefix}/setup/{rank}", "ok" if error is None else "failed")
        keys = [f"{prefix}/setup/{r}" for r in range(world_size)]
        store.wait(keys, 2 * timeout + timedelta(seconds=10))
        if all(store.get(k) == b"ok" for k in keys):
            return
        if dist.is_initialized():
            dist.destroy_process_group()
        else:  # a failed start may have counted a group; the next try must name it alike
            dist.distributed_c10d._world.group_count = 0  # what destroy_process_group does
    raise RuntimeError(f"the {backend} process group did not start in {tries} tries"
                       + (f" (this rank: {error})" if error else
                          " (this rank's set-up worked; another rank's failed, see its log)")
                       ) from error
