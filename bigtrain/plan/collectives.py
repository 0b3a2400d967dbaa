"""What gloo's collectives cost between CPU ranks of this host, measured on two ranks.

On CPU ranks a collective is work of the rank's own core, not of a link beside it: gloo
copies into and out of its buffers, sums in its own arithmetic and pushes the bytes through
loopback sockets, while the rank's compute waits (one torch thread per rank, one core each:
nothing overlaps). Its bytes/s also differs by collective: on a 2-core host, per byte a
rank sends (the ring formulas of bigtrain.plan.cost), an all-reduce of 8 MB runs at about
1 GB/s, an all-gather at 0.5-0.8 GB/s and a reduce-scatter at 0.4-0.5 GB/s, each with a
fixed 0.1-0.3 ms, far from a loopback socket's speed. And FSDP2 (zero2/zero3) pays per
parameterised unit: its hooks, the copy of each shard into the all-gather buffer and of
the gathered tensors out, the gradient's copy into the reduce-scatter, the tiny collectives
of a small unit. So the probe measures, on `world_size` gloo ranks of this host (spawned
processes, 1 torch thread each):

    all_reduce, all_gather, reduce_scatter   bytes/s per ring byte, at PROBE_BYTES
    latency                                  seconds of a 4-byte all-reduce
    unit_zero2, unit_zero3                   seconds per FSDP2 unit and step, beyond its
                                             compute: a stack of UNITS small Linear units
                                             under fully_shard (reshard after forward or
                                             not) against the same stack unsharded

Example:
    from bigtrain.plan.collectives import measure_collectives
    costs = measure_collectives(world_size=2)   # a few seconds; None where it cannot run
    spec = replace(measure_cpu_device(2), collectives=costs)
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

#: bytes of the tensor each rank hands the bandwidth probes (a unit's or bucket's scale)
PROBE_BYTES = 8 * 2 ** 20
#: FSDP2 units of the per-unit probe, and their width
UNITS, UNIT_WIDTH = 16, 64
#: timed repeats of each probe (their median counts)
REPEATS = 7


@dataclass(frozen=True)
class CollectiveCosts:
    """Measured gloo collective costs between ranks of one host (see module docstring).

    Attributes:
        all_reduce: bytes/s per byte a rank sends in a ring all-reduce (2 (n-1)/n * size).
        all_gather: bytes/s per byte sent in an all-gather ((n-1)/n * gathered size).
        reduce_scatter: bytes/s per byte sent in a reduce-scatter ((n-1)/n * input size).
        latency: seconds of a collective of a few bytes.
        unit_zero2: seconds per FSDP2 unit and step with parameters kept gathered from
            forward to backward, beyond the unit's compute and its bytes.
        unit_zero3: the same with parameters resharded after forward (one more gather).
    """
    all_reduce: float
    all_gather: float
    reduce_scatter: float
    latency: float
    unit_zero2: float
    unit_zero3: float

    def __post_init__(self):
        for name in ("all_reduce", "all_gather", "reduce_scatter"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CollectiveCosts.{name} must be > 0 bytes/s, got "
                                 f"{getattr(self, name)!r}")
        for name in ("latency", "unit_zero2", "unit_zero3"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CollectiveCosts.{name} must be >= 0 seconds, got "
                                 f"{getattr(self, name)!r}")

    def rate(self, kind: str, fallback: float) -> float:
        """Bytes/s of collective `kind` ("all_reduce", "all_gather", "reduce_scatter"); any
        other traffic (point-to-point) at `fallback`."""
        return getattr(self, kind) if kind in ("all_reduce", "all_gather",
                                               "reduce_scatter") else fallback


def _median_seconds(fn, barrier) -> float:
    """Median wall seconds of `fn()` over REPEATS runs after a warm-up, each started
    together on every rank (`barrier`)."""
    fn()
    times = []
    for _ in range(REPEATS):
        barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bandwidths(dist, world: int) -> dict:
    """Bytes/s per ring byte of the three collectives, and a tiny all-reduce's seconds."""
    n = PROBE_BYTES // 4
    x, gathered, part = torch.ones(n), torch.empty(n * world), torch.empty(n // world)
    ring = (world - 1) / world
    timed = {
        "all_reduce": (2 * ring * n * 4, lambda: dist.all_reduce(x)),
        "all_gather": (ring * n * world * 4, lambda: dist.all_gather_into_tensor(gathered, x)),
        "reduce_scatter": (ring * n * 4, lambda: dist.reduce_scatter_tensor(part, x)),
    }
    out = {k: sent / _median_seconds(fn, dist.barrier) for k, (sent, fn) in timed.items()}
    tiny = torch.ones(1)
    out["latency"] = _median_seconds(lambda: dist.all_reduce(tiny), dist.barrier)
    return out


def _unit_seconds(dist, reshard: bool) -> float:
    """Seconds per FSDP2 unit of one forward + backward, beyond the unsharded stack's."""
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    def stack():
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(UNIT_WIDTH, UNIT_WIDTH) for _ in range(UNITS)])
    x = torch.randn(4, UNIT_WIDTH)
    plain, sharded = stack(), stack()
    for unit in sharded:
        fully_shard(unit, reshard_after_forward=reshard)
    fully_shard(sharded, reshard_after_forward=reshard)
    base = _median_seconds(lambda: plain(x).sum().backward(), dist.barrier)
    fsdp = _median_seconds(lambda: sharded(x).sum().backward(), dist.barrier)
    return max(0.0, fsdp - base) / UNITS


def _rank(rank: int, world: int, store_path: str, queue) -> None:
    """One probe rank: its measurements (rank 0's) go to `queue`."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                init_method=f"file://{store_path}")
        out = _bandwidths(dist, world)
        out["unit_zero2"] = _unit_seconds(dist, reshard=False)
        out["unit_zero3"] = _unit_seconds(dist, reshard=True)
        dist.destroy_process_group()
        if rank == 0:
            queue.put(out)
    except Exception as err:  # the caller plans without the probe and says why
        queue.put(f"rank {rank}: {type(err).__name__}: {err}")


def measure_collectives(world_size: int = 2, timeout: float = 60.0) -> CollectiveCosts | None:
    """Gloo collective costs measured on `world_size` spawned ranks of this host (1 thread
    each); None when they cannot run here (no torch.distributed, a probe error, past
    `timeout` seconds)."""
    import multiprocessing as mp
    import torch.distributed as dist
    if world_size < 2:
        raise ValueError(f"measure_collectives needs world_size >= 2, got {world_size}")
    if not dist.is_available():
        return None
    ctx = mp.get_context("spawn")  # a fresh interpreter: no process group of the caller's
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bigtrain-collectives-") as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_rank, args=(r, world_size, store, queue), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        try:
            got = queue.get(timeout=timeout)
        except Exception:  # queue.Empty: a rank hung or died
            got = None
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return CollectiveCosts(**got) if isinstance(got, dict) else None
