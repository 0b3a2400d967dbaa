"""The slow-rank knob: make chosen ranks run a given factor slower, so heterogeneous training
(speed-aware data parallel, pipeline partition, parameter-server shares) can be tested and
benchmarked on one machine of equal cores.

A slowed piece of work sleeps (factor - 1) x its own measured time right after it runs, so
it takes factor x as long, whatever the device. Strategies take `slow_ranks={rank: factor}`;
when it is not given they read the environment variable BIGTRAIN_SLOW_RANKS="1:3.0" once,
at construction (`slow_ranks_option`).

Example:
    slow_ranks_option(None)            # {} or e.g. {1: 3.0} from BIGTRAIN_SLOW_RANKS
    step = slowed(step, 3.0)           # step() now takes 3x its compute time
    t0 = start_clocks(); work(); wall, cpu = pace(t0, 3.0, device)   # the same, inline
"""
from __future__ import annotations

import functools
import os
import time
from typing import Callable

import torch

SLOW_RANKS_ENV = "BIGTRAIN_SLOW_RANKS"


def parse_slow_ranks(text: str) -> dict[int, float]:
    """`"1:3.0,2:1.5"` -> {1: 3.0, 2: 1.5} (the BIGTRAIN_SLOW_RANKS syntax).

    Example:
        >>> parse_slow_ranks("1:3")
        {1: 3.0}
    """
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        rank, sep, factor = part.partition(":")
        try:
            out[int(rank)] = float(factor)
        except ValueError:
            raise ValueError(f"{SLOW_RANKS_ENV}={text!r}: expected 'rank:factor' pairs separated "
                             "by commas, e.g. '1:3.0' makes rank 1 three times slower") from None
    return out


def slow_ranks_option(slow_ranks: dict[int, float] | None) -> dict[int, float]:
    """The knob's value: `slow_ranks` if given, else BIGTRAIN_SLOW_RANKS; factors checked.

    Raises:
        ValueError: a factor below 1 (1 = normal speed).
    """
    if slow_ranks is None:
        slow_ranks = parse_slow_ranks(os.environ.get(SLOW_RANKS_ENV, ""))
    out = {int(r): float(f) for r, f in slow_ranks.items()}
    if any(not f >= 1 for f in out.values()):
        raise ValueError(f"slow_ranks factors must be >= 1 (1 = normal speed), got {out}")
    return out


def check_slow_ranks(slow_ranks: dict[int, float], world_size: int) -> None:
    """ValueError when the knob names a rank the job does not have."""
    bad = [r for r in slow_ranks if not 0 <= r < world_size]
    if bad:
        raise ValueError(f"slow_ranks names ranks {bad} outside 0..{world_size - 1}")


def slowed(fn, factor: float):
    """`fn` made `factor` x slower: each call sleeps (factor - 1) x the call's own time.

    Example:
        >>> slowed(len, 1.0) is len
        True
    """
    if factor <= 1.0:
        return fn
    return after_each(fn, lambda seconds: time.sleep((factor - 1.0) * seconds))


def after_each(fn, done: Callable[[float], None], clock: Callable[[], float] | None = None):
    """`fn` that calls `done(seconds)` with each call's own duration on `clock` (default
    time.perf_counter), even when the call raises."""
    clock = clock if clock is not None else time.perf_counter

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            done(clock() - t0)
    return wrapper


def start_clocks() -> tuple[float, float]:
    """(wall, CPU) seconds now, for `pace`."""
    return time.perf_counter(), time.process_time()


def pace(t0: tuple[float, float], factor: float, device: torch.device) -> tuple[float, float]:
    """End a timed piece of work begun at `t0 = start_clocks()`: wait for the device's queued
    work, sleep (factor - 1) x its wall time (the knob; factor 1 sleeps not at all).

    Returns:
        (wall seconds, the sleep included; CPU seconds of this process x factor): the work's
        cost as the slowed rank sees it, by either clock.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
    if factor > 1.0:
        time.sleep((factor - 1.0) * wall)
        wall = time.perf_counter() - t0[0]
    return wall, cpu * factor
