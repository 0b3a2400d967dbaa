"""Device inventory: what compute this host offers, measured briefly, saved as JSON so the
planner (bigtrain.plan) and speed-aware data parallel can read it later.

One entry per device: the host CPU, then every CUDA device. Each gives its type, name,
memory, measured dense-matmul throughput, host <-> device and link bandwidth, and cores
(CPU cores or CUDA streaming multiprocessors). The CPU figures come from
`bigtrain.plan.device.measure_cpu_device`; `DeviceInfo.to_spec()` turns an entry into the
planner's `DeviceSpec`.

Example:
    from bigtrain.parallel.inventory import inventory, load_inventory, save_inventory
    devices = inventory()                       # about a second on a CPU host
    save_inventory(devices, "devices.json")
    specs = [d.to_spec() for d in load_inventory("devices.json")]
    # declared shares for ranks on unequal devices, one entry per rank:
    BalancedDataParallel(balance="fixed", weights=[d.flops for d in devices[1:]])
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, fields

import torch

from bigtrain.plan.device import (CPU_COLLECTIVE_LATENCY, DeviceSpec, host_memory_bytes,
                                  measure_cpu_device)

FORMAT, VERSION = "bigtrain-device-inventory", 1
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class DeviceInfo:
    """One device of this host.

    Attributes:
        type: "cpu" (the host) or "cuda".
        index: CUDA ordinal (None for the host CPU).
        name: model name, e.g. "NVIDIA H100 80GB HBM3" or the CPU's model.
        memory_bytes: memory of the device (bytes); the host's physical memory for "cpu".
        flops: measured dense matmul throughput in `dtype` (FLOP/s).
        dtype: precision of the `flops` measurement ("float32" on CPU, "bfloat16" on CUDA).
        host_bandwidth: measured host -> device copy bandwidth from pinned memory (bytes/s);
            None for the host CPU itself.
        link_bandwidth: measured bandwidth between ranks (bytes/s): for "cpu", half the memory
            copy rate (what gloo reaches through loopback, at best); for "cuda", a copy to
            another CUDA device (None with a single device).
        cores: CPU cores of the host, or streaming multiprocessors of a CUDA device.
    """
    type: str
    index: int | None
    name: str
    memory_bytes: int
    flops: float
    dtype: str
    host_bandwidth: float | None
    link_bandwidth: float | None
    cores: int

    def __post_init__(self):
        if self.type not in DEVICE_TYPES:
            raise ValueError(f"DeviceInfo.type must be one of {DEVICE_TYPES}, got {self.type!r}")
        for name in ("memory_bytes", "flops", "cores"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DeviceInfo.{name} must be > 0, got {getattr(self, name)!r} "
                                 f"for {self.type} device {self.name!r}; re-run inventory()")
        for name in ("host_bandwidth", "link_bandwidth"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"DeviceInfo.{name} must be > 0 or None, got {value!r}")

    def to_spec(self, ranks_per_device: int = 1) -> DeviceSpec:
        """The planner's view of one rank on this device.

        Args:
            ranks_per_device: ranks sharing the device (CPU ranks on one host split its
                memory and throughput).

        Example:
            spec = inventory()[0].to_spec(ranks_per_device=2)
        """
        if ranks_per_device < 1:
            raise ValueError(f"ranks_per_device must be >= 1, got {ranks_per_device}")
        link = self.link_bandwidth or self.host_bandwidth or 1e9  # 1 GB/s: unknown, be modest
        latency = CPU_COLLECTIVE_LATENCY if self.type == "cpu" else 1e-5
        return DeviceSpec(self.type, self.memory_bytes / ranks_per_device,
                          self.flops / ranks_per_device, link,
                          host_bandwidth=self.host_bandwidth, latency=latency)

    @staticmethod
    def from_dict(entry: dict) -> "DeviceInfo":
        names = {f.name for f in fields(DeviceInfo)}
        missing, extra = names - set(entry), set(entry) - names
        if missing or extra:
            raise ValueError(f"device entry {entry!r} lacks {sorted(missing)} / has unknown "
                             f"{sorted(extra)}; re-create the file with save_inventory()")
        return DeviceInfo(**entry)


# ---- measurements (each a fraction of a second) ---------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of `repeats` calls of `fn` on `device` (synchronised; one warm-up)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """FLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs) on `device` in `dtype`.

    Example:
        matmul_flops(torch.device("cpu"), torch.float32, 256)
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2.0 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), device, repeats)


def copy_bandwidth(src: torch.device, dst: torch.device, megabytes: int,
                   repeats: int = 3) -> float:
    """Bytes/s of copying `megabytes` from `src` to `dst` (pinned when the host is one end
    and CUDA the other, as offload and data loading use it)."""
    pin = torch.cuda.is_available() and "cuda" in (src.type, dst.type) and "cpu" in (src.type,
                                                                                   dst.type)
    size = megabytes * 2 ** 20
    a = torch.empty(size, dtype=torch.uint8, device=src, pin_memory=pin and src.type == "cpu")
    b = torch.empty(size, dtype=torch.uint8, device=dst, pin_memory=pin and dst.type == "cpu")
    sync = dst if dst.type == "cuda" else src
    return size / _best_seconds(lambda: b.copy_(a, non_blocking=pin), sync, repeats)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_entry(matmul_n: int = 512, copy_mb: int = 32, repeats: int = 3) -> DeviceInfo:
    """The host CPU, measured with bigtrain.plan.device.measure_cpu_device."""
    spec = measure_cpu_device(ranks_per_host=1, n=matmul_n, copy_mb=copy_mb, repeats=repeats)
    return DeviceInfo("cpu", None, _cpu_name(), int(host_memory_bytes()), spec.flops, "float32",
                      None, spec.bandwidth, os.cpu_count() or 1)


def cuda_entry(index: int, matmul_n: int = 4096, copy_mb: int = 256,
               repeats: int = 3) -> DeviceInfo:
    """CUDA device `index`: bf16 matmul FLOP/s, pinned host -> device and peer bandwidth."""
    device = torch.device("cuda", index)
    props = torch.cuda.get_device_properties(device)
    flops = matmul_flops(device, torch.bfloat16, matmul_n, repeats)
    host = copy_bandwidth(torch.device("cpu"), device, copy_mb, repeats)
    link = None
    if torch.cuda.device_count() > 1:
        peer = torch.device("cuda", 1 if index == 0 else 0)
        link = copy_bandwidth(device, peer, copy_mb, repeats)
    return DeviceInfo("cuda", index, props.name, int(props.total_memory), flops, "bfloat16",
                      host, link, int(props.multi_processor_count))


def inventory(matmul_n: int = 512, copy_mb: int = 32, repeats: int = 3,
              cuda: bool = True) -> list[DeviceInfo]:
    """Measure this host's devices: the CPU first, then each CUDA device (if `cuda`).

    Args:
        matmul_n: CPU matmul size (CUDA devices use 4096, large enough to fill them).
        copy_mb: megabytes per CPU copy sample (CUDA: 8x as much).
        repeats: samples per figure (the best is kept: the least disturbed).
        cuda: also measure CUDA devices when torch sees any.

    Returns:
        One DeviceInfo per device.

    Example:
        for d in inventory(): print(d.type, d.name, f"{d.flops / 1e12:.1f} TFLOP/s")
    """
    devices = [cpu_entry(matmul_n, copy_mb, repeats)]
    if cuda and torch.cuda.is_available():
        devices += [cuda_entry(i, copy_mb=copy_mb * 8, repeats=repeats)
                    for i in range(torch.cuda.device_count())]
    return devices


# ---- the planner's view ---------------------------------------------------------------------
def rank_specs(devices: list[DeviceInfo], ranks: int, kind: str | None = None) -> list[DeviceSpec]:
    """One planner DeviceSpec per rank of a job of `ranks` ranks on this inventory's host.

    Ranks go where `fit`/`bigtrain run` put them: with kind "cuda" local rank r uses CUDA
    device r % (number of CUDA devices), ranks sharing a device split it; with kind "cpu"
    every rank shares the host CPU. Devices of different speeds give different specs, which
    `bigtrain.plan.plan(device=...)` reads as a mixed job.

    Args:
        devices: from `inventory()` or `load_inventory(path)`.
        ranks: world size on this host.
        kind: "cpu" or "cuda"; default "cuda" when the inventory lists a CUDA device.

    Example:
        specs = rank_specs(load_inventory("devices.json"), ranks=4)
        print(plan(model, devices=4, batch_size=256, device=specs).best.strategy)
    """
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    gpus = [d for d in devices if d.type == "cuda"]
    kind = kind or ("cuda" if gpus else "cpu")
    if kind not in DEVICE_TYPES:
        raise ValueError(f"kind must be one of {DEVICE_TYPES}, got {kind!r}")
    if kind == "cpu":
        host = next((d for d in devices if d.type == "cpu"), None)
        if host is None:
            raise ValueError("the inventory lists no CPU entry; re-measure with inventory()")
        return [host.to_spec(ranks_per_device=ranks)] * ranks
    if not gpus:
        raise ValueError("the inventory lists no CUDA device: plan for kind='cpu', or measure "
                         "the inventory on the GPU host")
    placed = [gpus[r % len(gpus)] for r in range(ranks)]
    return [d.to_spec(ranks_per_device=placed.count(d)) for d in placed]


# ---- JSON -------------------------------------------------------------------------------------
def save_inventory(devices: list[DeviceInfo], path: str) -> None:
    """Write `devices` as JSON (with the host name and the time of measurement)."""
    doc = {"format": FORMAT, "version": VERSION, "host": platform.node(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "devices": [asdict(d) for d in devices]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def load_inventory(path: str) -> list[DeviceInfo]:
    """Read a file written by `save_inventory`; a wrong or damaged file raises ValueError."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e}); re-create it with save_inventory()") \
                from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bigtrain device inventory (expected format "
                         f"{FORMAT!r}); re-create it with save_inventory(inventory(), path)")
    if doc.get("version") != VERSION:
        raise ValueError(f"{path} has inventory version {doc.get('version')!r}, this bigtrain "
                         f"reads version {VERSION}; re-measure with inventory()")
    return [DeviceInfo.from_dict(entry) for entry in doc["devices"]]
