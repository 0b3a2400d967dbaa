"""What one rank's device can hold and do: memory, compute throughput, link bandwidth.

The planner divides work by these numbers, so they only need to be right within a factor of
about two to rank strategies; `measure_cpu_device()` gets closer on the machine at hand.

Example:
    from bigtrain.plan.device import DeviceSpec, cpu_device, measure_cpu_device
    spec = cpu_device(ranks_per_host=2)     # defaults, this host shared by 2 ranks
    spec = measure_cpu_device()              # ~0.5 s of matmul + memcpy timing, and a
                                             # kernel probe for the planner's step time
    gpu = DeviceSpec.preset("h100-80gb")
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from bigtrain.plan.collectives import CollectiveCosts
from bigtrain.plan.kernels import KernelProbe

#: Conservative fp32 throughput of one CPU core with AVX2 FMA in a real matmul (FLOP/s).
CPU_FLOPS_PER_CORE = 2.0e10
#: gloo all-reduce bandwidth between processes on one host, through loopback (bytes/s).
CPU_LOOPBACK_BANDWIDTH = 2.0e9
#: fixed cost of one gloo collective between local processes (seconds).
CPU_COLLECTIVE_LATENCY = 5e-5
#: bytes/s one CPU core streams through memory (read + write) in an elementwise update
#: (a 2-core AMD EPYC VM measures 14 GB/s copying with one thread; an update streams less).
CPU_MEMORY_BANDWIDTH_PER_CORE = 1.0e10

_PRESETS = {
    # name: (kind, memory bytes, dense bf16 FLOP/s, per-GPU interconnect bytes/s, host link
    #        bytes/s, memory bytes/s)
    "a100-80gb": ("cuda", 80e9, 312e12, 300e9, 25e9, 2.0e12),
    "h100-80gb": ("cuda", 80e9, 989e12, 450e9, 50e9, 3.35e12),
    "h200": ("cuda", 141e9, 989e12, 450e9, 50e9, 4.8e12),
}


@dataclass(frozen=True)
class DeviceSpec:
    """One rank's device.

    Attributes:
        kind: "cpu" or "cuda" (decides whether host offload can free device memory).
        memory_bytes: memory this rank may use (bytes). On a CPU host shared by several ranks,
            each rank's share.
        flops: sustained compute throughput of this rank (FLOP/s) in the training precision.
        bandwidth: per-rank bandwidth of collective / point-to-point links (bytes/s).
        host_bandwidth: device <-> host copy bandwidth for offloading (bytes/s); None means
            the same as `bandwidth`.
        host_memory_bytes: host memory this rank may fill with offloaded state (bytes); None
            means this machine's physical memory split over the ranks.
        latency: fixed seconds per collective or message, whatever its size (the alpha of
            the alpha-beta model; it dominates for small models and many small messages).
        memory_bandwidth: bytes/s this rank streams through its own memory (read + write);
            bounds the optimizer update, which touches every parameter, gradient and state
            element once per step and does few FLOPs per byte. None: no update term.
        kernels: a probe of this host's kernels (bigtrain.plan.kernels); with it the planner
            times the model's own kernels at each rank's batch instead of dividing FLOPs by
            `flops`, and prices the update at a fused Adam's measured speed, both scaled by
            flops / kernels.peak_flops (the rank's share of the probed host). None: FLOPs and
            `memory_bandwidth` only (a device that is not this host, a datasheet preset).
        collectives: gloo collective costs measured between ranks of this host
            (bigtrain.plan.collectives.measure_collectives); with them a CPU rank's
            communication is priced per kind of collective and per FSDP2 unit, and its
            buffer copies at `memory_bandwidth`. None: `bandwidth` and `latency` only.
    """
    kind: str
    memory_bytes: float
    flops: float
    bandwidth: float
    host_bandwidth: float | None = None
    host_memory_bytes: float | None = None
    latency: float = 5e-5
    memory_bandwidth: float | None = None
    kernels: KernelProbe | None = None
    collectives: CollectiveCosts | None = None

    def __post_init__(self):
        if self.kind not in ("cpu", "cuda"):
            raise ValueError(f"DeviceSpec.kind must be 'cpu' or 'cuda', got {self.kind!r}")
        for name in ("memory_bytes", "flops", "bandwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DeviceSpec.{name} must be > 0, got {getattr(self, name)!r}; "
                                 "pass the figure of one rank's device")
        if not self.latency >= 0:
            raise ValueError(f"DeviceSpec.latency must be >= 0 seconds, got {self.latency!r}")
        if self.kernels is not None and not isinstance(self.kernels, KernelProbe):
            raise ValueError(f"DeviceSpec.kernels must be a bigtrain.plan.kernels.KernelProbe "
                             f"or None, got {type(self.kernels).__name__}")
        if self.collectives is not None and not isinstance(self.collectives, CollectiveCosts):
            raise ValueError("DeviceSpec.collectives must be a bigtrain.plan.collectives."
                             f"CollectiveCosts or None, got {type(self.collectives).__name__}")
        for name in ("host_bandwidth", "host_memory_bytes", "memory_bandwidth"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"DeviceSpec.{name} must be > 0 or None, got {value!r}")

    @property
    def host_link(self) -> float:
        """Bandwidth used for offload traffic (bytes/s)."""
        return self.host_bandwidth if self.host_bandwidth is not None else self.bandwidth

    def with_overrides(self, memory_bytes=None, flops=None, bandwidth=None) -> "DeviceSpec":
        """A copy with the given (non-None) figures replaced."""
        changes = {k: v for k, v in (("memory_bytes", memory_bytes), ("flops", flops),
                                     ("bandwidth", bandwidth)) if v is not None}
        return replace(self, **changes)

    @staticmethod
    def preset(name: str) -> "DeviceSpec":
        """A datasheet spec for a known accelerator ("a100-80gb", "h100-80gb", "h200").

        Args:
            name: preset name, case-insensitive.
        """
        key = name.lower()
        if key not in _PRESETS:
            raise ValueError(f"unknown device preset {name!r}; known: {sorted(_PRESETS)}, "
                             "or build DeviceSpec(kind, memory_bytes, flops, bandwidth)")
        kind, mem, flops, bw, host, mem_bw = _PRESETS[key]
        return DeviceSpec(kind, mem, flops, bw, host, latency=1e-5, memory_bandwidth=mem_bw)


def host_memory_bytes() -> float:
    """Physical memory of this host in bytes (falls back to 8 GB where sysconf lacks it)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8e9


def cpu_device(ranks_per_host: int = 1, cores: int | None = None) -> DeviceSpec:
    """Default spec for CPU ranks sharing one host: memory and cores split evenly.

    Args:
        ranks_per_host: processes that share this host's memory and cores.
        cores: cores of the host (default: os.cpu_count()).

    Example:
        >>> cpu_device(ranks_per_host=4).kind
        'cpu'
    """
    if ranks_per_host < 1:
        raise ValueError(f"ranks_per_host must be >= 1, got {ranks_per_host}")
    cores = cores or os.cpu_count() or 1
    cores_per_rank = max(cores / ranks_per_host, 1e-3)
    return DeviceSpec("cpu", host_memory_bytes() / ranks_per_host,
                      CPU_FLOPS_PER_CORE * cores_per_rank, CPU_LOOPBACK_BANDWIDTH,
                      latency=CPU_COLLECTIVE_LATENCY,
                      memory_bandwidth=CPU_MEMORY_BANDWIDTH_PER_CORE * cores_per_rank)


def _time_best(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls (seconds); the best is the least disturbed."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_matmul_flops(n: int = 512, repeats: int = 3) -> float:
    """FLOP/s of an n x n fp32 matmul with this process's torch threads (best of `repeats`).

    Inside a rank whose threads are its share of the host's cores this is already the
    rank's share of the host: do not divide it by the ranks again.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up the BLAS threads
    return 2.0 * n ** 3 / _time_best(lambda: torch.mm(a, b), repeats)


def measure_peak_flops(seconds: float = 0.3, n: int = 512) -> float:
    """Peak fp32 matmul FLOP/s of this process's torch threads, measured for about
    `seconds`: a warm-up of a tenth of it, then short timed groups of n x n matmuls (about
    a millisecond each, at least one matmul) until the time is spent; the fastest group is
    kept, the one least disturbed by other work on the host. Steadier than one short
    matmul, which reads several times slow when its thread is descheduled once.

    Example:
        flops = measure_peak_flops(0.3)     # about 0.3 s of matmuls
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    start = time.perf_counter()
    reps = 0
    while time.perf_counter() < start + seconds / 10 or reps < 2:  # warm BLAS and caches
        torch.mm(a, b)
        reps += 1
    one = (time.perf_counter() - start) / reps  # seconds per matmul, warm
    per_group = max(1, int(1e-3 / max(one, 1e-9)))
    groups = max(3, int((seconds - (time.perf_counter() - start)) / (one * per_group)))
    best = _time_best(lambda: [torch.mm(a, b) for _ in range(per_group)], groups)
    return 2.0 * n ** 3 * per_group / best


def rank_peak_flops(measured: float, threads: int, ranks_per_host: int,
                    cores: int | None) -> float:
    """Peak FLOP/s of one rank from a matmul it timed alone with its own `threads`.

    The rank's threads are its share of the cores, so the measurement is its peak, as long
    as the ranks of the host do not ask for more threads than there are cores; when they
    do (ranks x threads > cores) they share the cores, and so the peak, in that ratio.

    Example:
        >>> rank_peak_flops(1e10, threads=1, ranks_per_host=2, cores=2)
        10000000000.0
        >>> rank_peak_flops(1e10, threads=2, ranks_per_host=2, cores=2)
        5000000000.0
    """
    if cores is None or threads * ranks_per_host <= cores:
        return measured
    return measured * cores / (threads * ranks_per_host)


def measure_cpu_device(ranks_per_host: int = 1, n: int = 512, copy_mb: int = 64,
                       repeats: int = 3, collectives: bool = False) -> DeviceSpec:
    """Measure this host: an n x n fp32 matmul for FLOP/s, a tensor copy for bandwidth, and
    attach a KernelProbe (its timings are taken when a plan first needs them: about a
    second for a 100M-parameter model, cached per process).

    The copy bandwidth is an upper bound of what gloo reaches through loopback between
    processes, so it is halved. Memory and FLOP/s are split over `ranks_per_host`.

    Args:
        ranks_per_host: processes that will share this host.
        n: matmul size (2 n^3 FLOPs each).
        copy_mb: megabytes copied per bandwidth sample.
        repeats: samples per figure (best kept).
        collectives: also measure gloo's collectives between `ranks_per_host` (>= 2) ranks
            of this host (bigtrain.plan.collectives: a few seconds of spawned processes).

    Example:
        spec = measure_cpu_device(ranks_per_host=2)
    """
    flops = measure_matmul_flops(n, repeats)
    src = torch.empty(copy_mb * 2 ** 20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    # a copy reads and writes every byte once: 2 x size moved through memory
    copy_bw = 2.0 * src.numel() / _time_best(lambda: dst.copy_(src), repeats)
    costs = None
    if collectives and ranks_per_host >= 2:
        from bigtrain.plan.collectives import measure_collectives
        costs = measure_collectives(ranks_per_host)
    return DeviceSpec("cpu", host_memory_bytes() / ranks_per_host, flops / ranks_per_host,
                      copy_bw / 2.0, memory_bandwidth=copy_bw / ranks_per_host,
                      kernels=KernelProbe(peak_flops=flops, stream_bandwidth=copy_bw),
                      collectives=costs)


def rank_specs(device, devices: int, overrides: tuple) -> list[DeviceSpec]:
    """One DeviceSpec per rank: `device` is None (this CPU host shared by `devices` ranks),
    one DeviceSpec (every rank alike) or a sequence of `devices` specs (a mixed job).
    `overrides` (memory, flops, bandwidth) replace the figures of every rank."""
    if device is None:
        device = cpu_device(ranks_per_host=devices)
    if isinstance(device, DeviceSpec):
        specs = [device] * devices
    else:
        specs = list(device)
        if len(specs) != devices or not all(isinstance(s, DeviceSpec) for s in specs):
            raise ValueError(f"device must be a DeviceSpec or a list of {devices} DeviceSpecs "
                             f"(one per rank), got {len(specs)} entries; see "
                             "bigtrain.parallel.inventory.rank_specs for one from an inventory")
    return [s.with_overrides(*overrides) for s in specs]


def slowest(specs: Sequence[DeviceSpec]) -> DeviceSpec:
    """The figures an evenly split job runs at: the least memory, FLOP/s and bandwidth of
    any rank (a step waits for the slowest rank; the smallest device must hold its share)."""
    first = specs[0]
    kinds = {s.kind for s in specs}
    return replace(first, kind="cuda" if "cuda" in kinds else "cpu",
                   memory_bytes=min(s.memory_bytes for s in specs),
                   flops=min(s.flops for s in specs),
                   bandwidth=min(s.bandwidth for s in specs),
                   latency=max(s.latency for s in specs),
                   memory_bandwidth=min((s.memory_bandwidth for s in specs
                                         if s.memory_bandwidth), default=None))


def step_rates(spec: DeviceSpec, n_params: float, probed: bool) -> dict:
    """The rates `bigtrain.plan.cost.step_time` prices a step of `spec`'s rank with, as its
    keyword arguments: the update's bytes/s (with the kernel probe, `probed`: a fused Adam's
    and a per-tensor loop's measured speed, scaled to the rank's share of the probed host;
    else `memory_bandwidth`), the measured collective costs, and on a CPU rank the bytes/s
    of the buffer copies its own core makes (its `memory_bandwidth`)."""
    rates = {"memory_bandwidth": spec.memory_bandwidth, "unfused_bandwidth": None,
             "collectives": spec.collectives,
             "copy_bandwidth": spec.memory_bandwidth if spec.kind == "cpu" else None}
    if probed and spec.kernels is not None:
        share = spec.flops / spec.kernels.peak_flops
        rates["memory_bandwidth"] = spec.kernels.update_bandwidth(n_params) * share
        rates["unfused_bandwidth"] = spec.kernels.loop_update_bandwidth(n_params) * share
    return rates
