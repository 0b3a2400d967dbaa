"""Timing helpers shared by the bench scripts: alternate the contenders inside every repeat
(so a noisy neighbour slows all of them alike), take medians, print one table.

A contender is a zero-argument callable that runs one timed unit of work (an epoch, or a
fixed number of steps) and returns its duration in seconds, or None to let `alternate` time
the whole call. Each repeat runs every contender once, in an order rotated by the repeat
index so no contender always goes first.

Example:
    times = alternate({"a": run_a, "b": run_b}, repeats=5, warmup=1)
    rows = [Row(name, samples_per_unit, t) for name, t in times.items()]
    print_table("fit, batch 32", rows, ratios=[("a", "b")])
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

MIN_REPEATS = 5  # medians of fewer repeats are too easily moved by one noisy run


@dataclass(frozen=True)
class Row:
    """One contender's timings.

    Attributes:
        name: label in the table.
        samples: samples processed by one timed unit (samples/s = samples / seconds).
        seconds: duration of each repeat, in seconds.
        note: free text printed after the numbers.
    """
    name: str
    samples: int
    seconds: list = field(default_factory=list)
    note: str = ""

    def __post_init__(self):
        if not self.seconds or min(self.seconds) <= 0:
            raise ValueError(f"contender {self.name!r} has no positive timings: {self.seconds}")

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Median samples per second."""
        return self.samples / self.median_s

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeat durations: how noisy this contender was."""
        return (max(self.seconds) - min(self.seconds)) / self.median_s


def _timed(fn: Callable[[], float | None]) -> float:
    t0 = time.perf_counter()
    out = fn()
    return out if out is not None else time.perf_counter() - t0


def alternate(contenders: dict[str, Callable[[], float | None]], repeats: int = MIN_REPEATS,
              warmup: int = 1) -> dict[str, list[float]]:
    """Run every contender `warmup` untimed times, then `repeats` timed rounds of all of them.

    Args:
        contenders: name -> callable running one unit of work; returns seconds or None.
        repeats: timed rounds (>= 5 for a usable median).
        warmup: untimed rounds first (allocator, thread pool and kernel caches warm up).

    Returns:
        name -> list of `repeats` durations in seconds.

    Example:
        alternate({"x": lambda: sum(range(10**6)) and None}, repeats=5)
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            times[name].append(_timed(contenders[name]))
    return times


def on_cpu_clock(fn: Callable[[], float | None]) -> Callable[[], float]:
    """`fn` timed by this process's CPU time instead of the wall clock: with one torch thread
    that is the time the work held a core, which other programs' load cannot stretch (it
    still feels their cache and memory traffic). For single-process contenders only."""
    def timed() -> float:
        c0 = time.process_time()
        fn()
        return time.process_time() - c0
    return timed


def machine_line() -> str:
    """One line naming what the numbers were measured on."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"1-min load {load:.1f}")


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot, all cores together (Linux
    /proc/stat: user + nice + system + irq + softirq + steal); None elsewhere.

    The difference over a timed stretch, less the CPU time of the bench's own processes,
    is what other programs took: the 1-minute load average misses a neighbour that ran for
    part of a bench, and a bench whose ranks sleep (the slow-rank knob) adds little load
    itself.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    busy = sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8) if i < len(fields))
    return busy / os.sysconf("SC_CLK_TCK")


def others_cores(seconds: float = 2.0) -> float:
    """Cores other programs keep busy now: the machine's busy CPU time over `seconds` of
    this process sleeping, divided by them. Where /proc/stat is missing, the 1-minute load
    average stands in.

    The benches choose their torch threads with it. The load average, used before, still
    counted the bench or command of a minute earlier: in `make bench` a script saw a load
    of 1-2 on 2 cores and fell back to 1 thread on a machine with nothing else running.
    """
    start = machine_busy_seconds()
    if start is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    ours = time.process_time() - cpu0
    return max(0.0, (machine_busy_seconds() - start - ours) / (time.perf_counter() - t0))


def print_table(title: str, rows: list[Row], ratios: list[tuple[str, str]] = (),
                unit: str = "samples/s") -> dict[str, float]:
    """Print median rate, median and best time, and spread per contender, then the ratios.

    Args:
        title: heading line.
        rows: one Row per contender.
        ratios: (numerator, denominator) contender names; ratio = rate_a / rate_b.
        unit: label of the rate column.

    Returns:
        "a/b" -> ratio, for the caller's own checks.
    """
    by_name = {r.name: r for r in rows}
    width = max(len(r.name) for r in rows) + 2
    print(f"\n{title}")
    print(f"  {'contender':<{width}}{unit:>14}{'median s':>11}{'best s':>9}{'spread':>9}  repeats")
    for r in rows:
        print(f"  {r.name:<{width}}{r.rate:>14,.0f}{r.median_s:>11.4f}{min(r.seconds):>9.4f}"
              f"{r.spread:>8.0%}  "
              f"{len(r.seconds)}{'  ' + r.note if r.note else ''}")
    out = {}
    for a, b in ratios:
        if a in by_name and b in by_name:
            out[f"{a}/{b}"] = by_name[a].rate / by_name[b].rate
            print(f"  ratio {a} / {b}: {out[f'{a}/{b}']:.3f}x")
    return out


def check_target(label: str, value: float, target: float, higher_is_better: bool = True) -> bool:
    """Print whether `value` meets `target`; returns True when it does."""
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    print(f"  target {label}: {value:.3f} {sign} {target} -> {'met' if ok else 'MISSED'}")
    return ok


def report_step_ratio(title: str, rows: list[Row], steps: int, fast: str, slow: str,
                      target: float, ideal: float | None = None) -> float:
    """Table of `rows`, ms per step of each, and `fast`'s step time over `slow`'s against
    `target` (lower is better), with its spread over the repeats (the contenders alternate,
    so repeat i of one is paired with repeat i of the other) and the `ideal` ratio when
    given; returns the ratio of the medians."""
    ratios = print_table(title, rows, ratios=[(fast, slow)])
    for r in rows:
        print(f"  {r.name}: {r.median_s / steps * 1e3:.1f} ms per step (median)")
    step_ratio = 1.0 / ratios[f"{fast}/{slow}"]  # rate ratio -> time ratio
    by_name = {r.name: r for r in rows}
    paired = sorted(a / b for a, b in zip(by_name[fast].seconds, by_name[slow].seconds))
    print(f"  {fast} / {slow} step time per repeat: {paired[0]:.3f}..{paired[-1]:.3f} "
          f"(median of medians {step_ratio:.3f}" +
          (f"; ideal {ideal:.3f})" if ideal is not None else ")"))
    check_target(f"{fast} / {slow} step time", step_ratio, target, higher_is_better=False)
    return step_ratio


def hand_tuned_epoch(model: torch.nn.Module, xt: torch.Tensor, yt: torch.Tensor, batch: int,
                     lr: float, seed: int = 0) -> Callable[[], None]:
    """One epoch of what an expert writes for `model` on a CPU: tensors prepared once,
    index_select batches, fused Adam, no per-step host sync; loss and accuracy are read once
    per epoch, as a progress line would. The baseline the fit benches divide by."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    n, gen = len(xt), torch.Generator().manual_seed(seed)

    def run():
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, hits = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(idx)
            hits += (out.detach().argmax(1) == yb).sum()
        float(loss_sum), int(hits)
    return run


def in_processes(script: str, argv: list[str], processes: int, extra: list[str],
                 first_only: tuple[str, ...] = (), later: list[str] = ()
                 ) -> list[dict[str, float]]:
    """Run `script` `processes` times, one after another, each in a fresh interpreter with
    `argv + extra + ["--processes", "1", "--ratios-out", FILE]`, and return the figures each
    wrote to FILE (a JSON object). Flags in `first_only` go to the first run only; `later`
    is added to every run after the first.

    Why: on a shared VM one process can run a contender several percent slower for its whole
    life (every repeat agreeing), so repeats inside one process cannot average it out."""
    runs = []
    for i in range(processes):
        args = argv if i == 0 else [*(a for a in argv if a not in first_only), *later]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "ratios.json")
            print(f"\n----- process {i + 1} of {processes} -----", flush=True)
            # the last --processes given wins: every run is one process
            subprocess.run([sys.executable, os.path.abspath(script), *args, *extra,
                            "--processes", "1", "--ratios-out", out], check=True)
            with open(out, encoding="utf-8") as f:
                runs.append(json.load(f))
    return runs


def print_medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Print, and return, the median of every figure over `runs` (each run's in brackets);
    a key ending in " us" is a time in microseconds, in " %" a percentage, the rest are
    ratios."""
    print(f"\nmedian over {len(runs)} processes (each process's figure in brackets)")
    medians = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        medians[key] = statistics.median(values)
        fmt = ("{:.1f} us" if key.endswith(" us") else "{:.1f} %" if key.endswith(" %")
               else "{:.3f}x")
        print(f"  {key:<44} {fmt.format(medians[key]):>9}  "
              f"[{', '.join(fmt.format(v) for v in values)}]")
    return medians
