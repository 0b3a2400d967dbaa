"""How long a training step's kernels take on this host, timed at the shapes the model runs.

One matmul peak prices every FLOP alike, and on a CPU that reads 12-50 % low: the weight
gradient of a layer at batch 64 (a (width x 64) by (64 x width) product) runs at a third of
the peak, small layers and element-wise calls run far below it, each call costs a few
microseconds of dispatch, and the optimizer streams memory. So the probe times the model's
own calls:

    step = sum over the step's calls (bigtrain.plan.optrace) of the call's seconds
    update = optimizer bytes / the bytes/s of a fused Adam step

A call's seconds: the call itself, run from Python on tensors of its shapes, strides and
dtypes (so its dispatch is counted), a warm-up and then the best of up to three runs, once
per distinct call per process: a 4-layer model runs each layer's calls once. Each run starts
with the level-2 caches overwritten: in a step, the calls between two uses of a tensor have
filled them with other data. Inputs bigger than those caches (a layer's weights) add their
bytes / stream bandwidth: in a step they were last read a pass ago, and the step's other
tensors (gradients, optimizer state) have pushed them out to memory since; a timed run finds
them in the last-level cache instead. Calls too big to time (over REPLAY_MAX_BYTES, or
expected over REPLAY_MAX_SECONDS) or met after PROBE_BUDGET_S of timing are estimated:
max(FLOPs / peak, bytes / stream bandwidth), stretched by how far the step's timed calls
fell short of their own estimates. Calls are run into a reused output buffer where the op
has an out= form: a training step's allocator hands back memory its last step freed, while
a fresh big output would pay the kernel's page faults on every run. Except for the biggest:
glibc's malloc (Linux) maps every block of MMAP_MAX_BYTES or more anew and unmaps it on
free, so a call whose output is that big (a 5000 x 5000 layer's weight gradient, under
`zero_grad(set_to_none=True)`) writes into fresh pages every step: those bytes are added at
the rate this host faults pages in (`fault_bandwidth`; 4 x 100 MB of gradients measured 400
MB of page faults per step, a fifth of the step).

Times are this process's, with its torch threads; the planner stretches them by
peak_flops / the rank's FLOP/s for a rank that gets a share of the host.

Example:
    from bigtrain.plan.kernels import KernelProbe
    probe = KernelProbe(peak_flops=1.5e11, stream_bandwidth=1e10)
    seconds = probe.step_seconds(model, (x[:1],), batch=64)   # about 1 s for 100M params
    probe.update_bandwidth(1e8)               # fused Adam bytes/s at 100M parameters, cached
"""
from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_map

from bigtrain.plan.optrace import OpCall, TensorShape, trace_step

#: calls whose tensors hold more bytes than this are estimated, not timed
REPLAY_MAX_BYTES = 512 * 2 ** 20
#: calls expected to take longer than this (seconds) are estimated, not timed
REPLAY_MAX_SECONDS = 0.5
#: seconds of timing one step's new calls may take; the rest are estimated
PROBE_BUDGET_S = 1.5
#: parameters the optimizer probe streams at most (16M: 256 MB of state and gradient,
#: past the caches of most CPUs; bigger models are taken to stream at its speed)
ADAM_PROBE_MAX = 2.0 ** 24
#: glibc malloc's largest mmap threshold on 64-bit Linux (DEFAULT_MMAP_THRESHOLD_MAX):
#: blocks this big or bigger are always mapped fresh, faulted in on first write
MMAP_MAX_BYTES = 32 * 2 ** 20
#: calls estimated to take this long (seconds) or more set how much slower than their
#: estimates untimed calls run (shorter ones are mostly dispatch, which an estimate lacks)
WORK_SECONDS = 1e-4

# (torch threads, OpCall.key) -> seconds of the call on this host, for the whole process
_TIMED: dict[tuple[int, str], float] = {}
# keys of calls that would not run on plain values: estimated, never tried again
_DECLINED: set[tuple[int, str]] = set()


def _real(x):
    """A tensor of a TensorShape's shape, strides and dtype, filled with a plain value
    (0.5 for floats: no denormals, no infinities; zero for integer indices)."""
    if not isinstance(x, TensorShape):
        return x
    span = 1 + sum((s - 1) * st for s, st in zip(x.shape, x.stride)) if all(x.shape) else 1
    base = torch.empty(span, dtype=x.dtype)
    base.fill_(0.5 if x.dtype.is_floating_point else 0)
    return base.as_strided(x.shape, x.stride)


def _clock():
    """The clock calls are timed by: with one torch thread the process's CPU time (the
    call runs on the caller's thread; other programs on the host do not stretch it),
    else the wall clock (CPU time would add up every thread's)."""
    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def l2_bytes() -> int:
    """Bytes of one core's level-2 cache (Linux sysfs), or 1 MiB where it cannot be read."""
    for index in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{index}/"
        try:
            with open(base + "level") as f:
                if f.read().strip() != "2":
                    continue
            with open(base + "size") as f:
                size = f.read().strip().upper()
        except OSError:
            break
        scale = {"K": 2 ** 10, "M": 2 ** 20}.get(size[-1:], 1)
        return int(size.rstrip("KM") or 0) * scale or 2 ** 20
    return 2 ** 20


def _names(func) -> list[str]:
    return [a.name for a in func._schema.arguments]


def out_form(call: OpCall):
    """The out= overload `call` can write into a given buffer with, or None (no single
    tensor output, no out= form, or one of another overload: sum.out is the full sum)."""
    into = getattr(call.func._overloadpacket, "out", None) if call.out is not None else None
    return into if into is not None and _names(into) == _names(call.func) + ["out"] else None


def time_call(call: OpCall) -> float | None:
    """Best seconds of `call` run on real tensors of its shapes (a warm-up, then three runs,
    two above 50 ms, none above 0.2 s: the warm-up's time), each run after the level-2
    caches of this process's threads were overwritten, into one output buffer where the op
    has an out= form (a fresh big output costs the kernel's page faults on every run,
    which a training step, reusing the memory its last step freed, does not pay); None
    when it cannot run that way (an argument the plain values do not suit)."""
    args, kwargs = tree_map(_real, (call.args, dict(call.kwargs)))
    into = out_form(call)
    if into is not None:  # into a buffer it reuses, as a step's allocator hands back memory
        kwargs = {**kwargs, "out": _real(call.out)}  # freed a step before (no fresh pages)
    run = functools.partial(into or call.func, *args, **kwargs)
    clock = _clock()
    flush = torch.empty(2 * l2_bytes() * torch.get_num_threads() // 4)  # float32: 2 x L2
    try:
        with torch.no_grad():
            start = clock()
            run()  # warm-up: kernel choice, allocator
            first = clock() - start
            best = first if first >= 0.2 else float("inf")
            for _ in range(3 if first < 0.05 else 2 if first < 0.2 else 0):
                flush.fill_(1.0)  # 2 x L2 bytes written: the call's operands evicted
                t0 = clock()
                run()
                best = min(best, clock() - t0)
    except Exception:  # noqa: BLE001 -- e.g. an index the plain values make invalid
        return None
    return best


@dataclass(frozen=True)
class KernelProbe:
    """Kernel timings of this host, for the planner's step time (see the module docstring).

    Attributes:
        peak_flops: the host's matmul FLOP/s the rank's DeviceSpec.flops is a share of
            (a rank on the whole host: the same figure).
        stream_bandwidth: bytes/s a memory-bound call streams, for calls estimated rather
            than timed.
        fault_bandwidth: bytes/s at which fresh pages are faulted in, for outputs of
            MMAP_MAX_BYTES or more (None: measured on this host when first needed).
    """
    peak_flops: float
    stream_bandwidth: float
    fault_bandwidth: float | None = None

    def __post_init__(self):
        for name in ("peak_flops", "stream_bandwidth", "fault_bandwidth"):
            if name == "fault_bandwidth" and self.fault_bandwidth is None:
                continue
            if not getattr(self, name) > 0:
                raise ValueError(f"KernelProbe.{name} must be > 0, got "
                                 f"{getattr(self, name)!r}; pass this host's measured figure")

    def estimate(self, call: OpCall) -> float:
        """Seconds of `call` from its FLOPs and bytes (the roofline of the host)."""
        return max(call.flops / self.peak_flops, call.nbytes / self.stream_bandwidth)

    def calls_seconds(self, calls: list[OpCall], timer=None) -> float:
        """Seconds of `calls` run one after the other: each distinct call timed once per
        process; one too big to time, or met after PROBE_BUDGET_S of timing, is estimated
        and scaled by how far the timed calls of this step that do real work (estimated at
        WORK_SECONDS or more) fell short of their estimates.
        `timer(call)`: seconds of one call, or None (default: time_call)."""
        timer = timer or time_call
        threads, spent, total = torch.get_num_threads(), 0.0, 0.0
        cache = l2_bytes() * threads  # operands beyond it come from farther memory in a step
        timed_s = guessed_s = 0.0     # the timed calls' seconds against their estimates
        pending = []                  # estimates of calls not timed
        for call in calls:
            key = (threads, call.key)
            guess = self.estimate(call)
            if key not in _TIMED and key not in _DECLINED and spent < PROBE_BUDGET_S and \
                    call.nbytes <= REPLAY_MAX_BYTES and guess <= REPLAY_MAX_SECONDS:
                start = time.perf_counter()
                seconds = timer(call)
                spent += time.perf_counter() - start
                if seconds is None:
                    _DECLINED.add(key)
                else:  # inputs beyond the L2 come from memory in a step: their bytes added
                    far = call.in_bytes if call.in_bytes > cache else 0.0
                    _TIMED[key] = seconds + far / self.stream_bandwidth
            if key in _TIMED:
                total += _TIMED[key]
                if guess >= WORK_SECONDS:  # a call its work dominates, not its dispatch
                    timed_s, guessed_s = timed_s + _TIMED[key], guessed_s + guess
            else:
                pending.append(guess)
        slower = max(1.0, timed_s / guessed_s) if guessed_s > 0 else 1.0
        return total + slower * sum(pending) + self.fresh_seconds(calls)

    def fresh_seconds(self, calls: list[OpCall]) -> float:
        """Seconds of faulting in the pages of outputs malloc maps anew every step (each of
        MMAP_MAX_BYTES or more). Only calls timed into a reused buffer (`out_form`): a call
        without one allocated its output, faults included, in every timed run."""
        if not sys.platform.startswith("linux"):  # another malloc: its thresholds differ
            return 0.0
        fresh = sum(c.out.nbytes for c in calls if c.out is not None and c.nbytes > 0
                    and c.out.nbytes >= MMAP_MAX_BYTES and out_form(c) is not None)
        if not fresh:
            return 0.0
        return fresh / (self.fault_bandwidth or fault_bandwidth(torch.get_num_threads()))

    def step_seconds(self, module: nn.Module, example: tuple, batch: int) -> float | None:
        """Seconds of one forward + loss + backward of `batch` samples of `module` in this
        process (bigtrain.plan.optrace lists the calls); None when it cannot be traced."""
        calls = trace_step(module, example, batch)
        return None if calls is None else self.calls_seconds(calls)

    def update_bandwidth(self, n_params: float) -> float:
        """Optimizer bytes per second of a fused Adam step over `n_params` parameters (28
        bytes per fp32 parameter), probed at about that size: a small model's state stays
        in the caches between steps, a big one's streams from memory."""
        n = min(max(float(n_params), 2.0 ** 20), ADAM_PROBE_MAX)
        return adam_bandwidth(torch.get_num_threads(), 2 ** round(math.log2(n)))

    def loop_update_bandwidth(self, n_params: float) -> float:
        """`update_bandwidth` of torch's per-tensor Adam loop: what an optimizer over
        DTensors (zero2/zero3, tensor parallel) runs, the fused kernel refusing them."""
        n = min(max(float(n_params), 2.0 ** 20), ADAM_PROBE_MAX)
        return loop_adam_bandwidth(torch.get_num_threads(), 2 ** round(math.log2(n)))


def step_timer(kernels: KernelProbe, module: nn.Module, example: tuple, notes: list[str]):
    """seconds(batch, rate): one forward + stand-in loss + backward of `batch` samples of
    `module` on a rank computing at `rate` FLOP/s (the probe's seconds stretched by
    kernels.peak_flops / rate), cached per batch; None, with a note saying so, when the
    module's calls cannot be listed. Appends a note on how step times are got."""
    @functools.lru_cache(maxsize=None)
    def at_peak(batch: int) -> float | None:
        return kernels.step_seconds(module, example, batch)

    def seconds(batch: int, rate: float) -> float | None:
        s = at_peak(batch)
        return None if s is None else s * kernels.peak_flops / rate
    if trace_step(module, example, 1) is None:
        notes.append("step time: FLOPs / FLOP/s (the module does not run on fake tensors, "
                     "so its kernels could not be listed)")
        return None
    notes.append("step time: the module's forward, a cross-entropy over its output and the "
                 "backward, every distinct kernel timed on this host at each rank's batch "
                 "(bigtrain.plan.kernels); the update at a fused Adam's measured bytes/s")
    return seconds


@functools.lru_cache(maxsize=None)
def fault_bandwidth(threads: int) -> float:
    """Bytes/s of page faults on this host (with `threads`, the cache key): a fresh 64 MiB
    block filled, less the same fill into a block already faulted in, best of 3."""
    n, clock = 64 * 2 ** 20, _clock()
    warm = torch.empty(n, dtype=torch.uint8)
    warm.fill_(1)
    best = float("inf")
    for _ in range(3):
        t0 = clock()
        torch.empty(n, dtype=torch.uint8).fill_(1)  # mapped anew (>= MMAP_MAX_BYTES)
        t1 = clock()
        warm.fill_(2)
        best = min(best, (t1 - t0) - (clock() - t1))
    return n / max(best, 1e-6)


@functools.lru_cache(maxsize=None)
def adam_bandwidth(threads: int, n: int) -> float:
    """Bytes/s of torch's fused Adam step on `n` fp32 parameters with `threads` torch
    threads (with n, the cache key): 28 bytes per parameter (read parameter, gradient and
    two moments; write parameter and moments), best of 3."""
    return _adam_rate(n, fused=True)


@functools.lru_cache(maxsize=None)
def loop_adam_bandwidth(threads: int, n: int) -> float:
    """`adam_bandwidth` of torch's per-tensor Adam loop (fused=False, foreach=False): the
    kernel of an optimizer over DTensors, which the fused kernel refuses."""
    return _adam_rate(n, fused=False)


def _adam_rate(n: int, fused: bool) -> float:
    """28 n bytes over the best of 3 timed Adam steps on `n` fp32 parameters."""
    p = nn.Parameter(torch.zeros(n))
    p.grad = torch.full((n,), 1e-3)
    try:
        opt = torch.optim.Adam([p], lr=1e-4, fused=True) if fused else \
            torch.optim.Adam([p], lr=1e-4, fused=False, foreach=False)
        opt.step()
    except (RuntimeError, TypeError):  # a torch without a fused CPU Adam
        opt = torch.optim.Adam([p], lr=1e-4, foreach=True)
        opt.step()
    clock, best = _clock(), float("inf")
    for _ in range(3):
        t0 = clock()
        opt.step()
        best = min(best, clock() - t0)
    return 28.0 * n / best
