"""Is bfloat16 fast on this CPU? A short probe, and what fit, the planner and the doctor do
with its answer.

A CPU without native bf16 instructions (AVX-512 BF16 or AMX) computes bf16 matmuls by
converting to fp32 and back, element by element: `precision="bf16-mixed"` then makes a
training step many times slower than fp32 (10-50x for a GPT step), where on a GPU or a CPU
with native bf16 it is faster. The probe times one n x n matmul in both dtypes (best of a
few runs, cached per process) and reads the CPU's flags. float16 ("16-mixed") is probed the
same way (`probe_float16`): a CPU without AVX-512 FP16 / AMX-FP16 computes it slowly too.

Example:
    from bigtrain.plan.bf16 import probe_bf16, slow_bf16_message
    probe = probe_bf16()                     # ~0.1 s the first time, then cached
    print(probe.slowdown, probe.native)      # e.g. 0.6 True (bf16 faster), 18.0 False
    msg = slow_bf16_message("bf16-mixed", "cpu", probe)   # None when bf16 is fine
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

#: bf16 matmul this many times slower than fp32 (and no native bf16 flag) is "slow"
SLOW_BF16_FACTOR = 2.0
#: /proc/cpuinfo flags of native bf16 arithmetic on x86
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: and of native float16 arithmetic
NATIVE_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
#: the precision each probed dtype trains in
_PRECISION = {"bfloat16": "bf16-mixed", "float16": "16-mixed"}


class SlowBf16Warning(UserWarning):
    """bf16 training on a CPU that computes bf16 far slower than fp32."""


@dataclass(frozen=True)
class Bf16Probe:
    """One bf16-vs-fp32 matmul probe of this CPU.

    Attributes:
        fp32_s: best seconds of an n x n fp32 matmul.
        bf16_s: best seconds of the same matmul in bf16.
        n: matmul size.
        native: whether the CPU flags show native bf16 (None: flags unknown, e.g. not Linux).
        flags: the native bf16 flags found.
        capability: torch's CPU kernel level (torch.backends.cpu.get_cpu_capability()).
        dtype: the half-precision dtype timed ("bfloat16", or "float16" for "16-mixed");
            `bf16_s` holds its time.
    """
    fp32_s: float
    bf16_s: float
    n: int
    native: bool | None
    flags: tuple[str, ...] = ()
    capability: str = ""
    dtype: str = "bfloat16"

    @property
    def slowdown(self) -> float:
        """bf16 seconds / fp32 seconds (below 1: bf16 is faster)."""
        return self.bf16_s / self.fp32_s

    @property
    def slow(self) -> bool:
        """bf16 is much slower than fp32 here, and no flag says the CPU has native bf16
        (the flag guards against a disturbed timing on a loaded machine)."""
        return self.slowdown > SLOW_BF16_FACTOR and self.native is not True


def native_bf16_flags(cpuinfo: str, flags: tuple[str, ...] = NATIVE_BF16_FLAGS
                      ) -> tuple[str, ...] | None:
    """The native bf16 flags (or other `flags`) in /proc/cpuinfo text; None when it has no
    flags line."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[-1].split())
            return tuple(f for f in flags if f in present)
    return None


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _best_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    torch.mm(a, b)  # warm up (kernel choice, thread pool)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


@functools.lru_cache(maxsize=None)
def probe_bf16(n: int = 256, repeats: int = 5) -> Bf16Probe:
    """Time an n x n matmul in fp32 and in bf16 on this CPU (best of `repeats`), cached per
    process and size; read the CPU's native bf16 flags.

    Args:
        n: matmul size (2 n^3 FLOPs each; 256 takes a few ms per run in fp32).
        repeats: timed runs per dtype; the best is the least disturbed.
    """
    return _probe(torch.bfloat16, NATIVE_BF16_FLAGS, n, repeats)


@functools.lru_cache(maxsize=None)
def probe_float16(n: int = 256, repeats: int = 5) -> Bf16Probe:
    """`probe_bf16` for float16 (precision="16-mixed"): its time in `bf16_s`, dtype
    "float16", the CPU's native float16 flags."""
    return _probe(torch.float16, NATIVE_FP16_FLAGS, n, repeats)


def _probe(dtype: torch.dtype, native: tuple[str, ...], n: int, repeats: int) -> Bf16Probe:
    a, b = torch.randn(n, n), torch.randn(n, n)
    fp32 = _best_seconds(a, b, repeats)
    half = _best_seconds(a.to(dtype), b.to(dtype), repeats)
    flags = native_bf16_flags(_cpuinfo(), native)
    return Bf16Probe(fp32, half, n, None if flags is None else bool(flags), flags or (),
                     torch.backends.cpu.get_cpu_capability(), str(dtype).removeprefix("torch."))


def slow_bf16_message(precision: str, device_kind: str, probe: Bf16Probe) -> str | None:
    """Why `precision` will be slow on this device, and what to use; None when it is fine
    (not the probe's half precision, not a CPU, or the CPU computes it at speed)."""
    if precision != _PRECISION[probe.dtype] or device_kind != "cpu" or not probe.slow:
        return None
    short, native = ("bf16", NATIVE_BF16_FLAGS) if probe.dtype == "bfloat16" else \
        ("float16", NATIVE_FP16_FLAGS)
    return (f"precision={precision!r} on this CPU: a {short} matmul took "
            f"{probe.slowdown:.1f}x as long as fp32 ({probe.n}x{probe.n}: "
            f"{probe.bf16_s * 1e3:.2f} ms vs {probe.fp32_s * 1e3:.2f} ms; torch CPU capability "
            f"{probe.capability or '?'}, no {' / '.join(native)} flag), so training steps "
            "will be several times slower than in fp32. Use precision='32' on this CPU; "
            f"{short} pays off on GPUs and on CPUs with native {short} "
            f"({' / '.join(native)})")


def bf16_record(precision: str, device_kind: str) -> dict | None:
    """What a run record keeps for the doctor when `precision` is bf16 on a CPU (probing
    once per process): {"slowdown": bf16/fp32 factor, "native": flags verdict, "slow": bool,
    "matmul_n": size}; None otherwise."""
    if precision != "bf16-mixed" or device_kind != "cpu":
        return None
    probe = probe_bf16()
    return {"slowdown": probe.slowdown, "native": probe.native, "slow": probe.slow,
            "matmul_n": probe.n}
