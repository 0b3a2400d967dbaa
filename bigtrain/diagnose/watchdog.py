"""Hang watchdog: say which rank a stuck distributed job is waiting for, instead of silence.

Every rank keeps a `Heartbeat`: the step and operation its main thread is in ("forward",
"backward", "metrics all-reduce", ...). Entering an operation is one attribute write, no
synchronisation. A daemon thread (`HangWatchdog`) publishes the heartbeat to the job's
key-value store about once a second. When the main thread has stayed in one operation
longer than the window (a collective that never completes, because a peer never arrived),
the thread reads every rank's heartbeat and prints one report naming the ranks that are
behind or silent and where each rank last was; then it calls `on_hang` (the engine makes
that fail the process, so the launcher reports the failure instead of hanging).

This module only needs an object with `set/get/check/delete_key` (a torch.distributed
Store: TCPStore, FileStore, PrefixStore, ...); it is passed in, so diagnose/ stays free of
the process-group plumbing in parallel/.

Example:
    beat = Heartbeat()
    dog = HangWatchdog(store, rank, world_size, beat, WatchdogConfig(timeout_s=120))
    dog.start()
    beat.enter("forward", step=0)      # the loop marks what it is doing
    ...
    dog.stop()
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

KEY = "bigtrain/heartbeat/{rank}"


@dataclass(frozen=True)
class WatchdogConfig:
    """When the hang watchdog fires.

    Attributes:
        enabled: run the watchdog in distributed fits (single-process fits never need it).
        timeout_s: seconds one operation may last before the job is declared hung; raise it
            when a single step, evaluation or checkpoint legitimately takes longer.
        interval_s: seconds between heartbeats (and hang checks).

    Example:
        >>> WatchdogConfig(timeout_s=300).interval_s
        1.0
    """
    enabled: bool = True
    timeout_s: float = 120.0
    interval_s: float = 1.0

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"watchdog must be True or False, got {self.enabled!r}")
        if not self.timeout_s or self.timeout_s <= 0:
            raise ValueError(f"watchdog_timeout must be a positive number of seconds, got "
                             f"{self.timeout_s!r}")
        if not 0 < self.interval_s < self.timeout_s:
            raise ValueError(f"the heartbeat interval ({self.interval_s} s) must be positive and "
                             f"shorter than watchdog_timeout ({self.timeout_s} s)")

    @classmethod
    def from_fit(cls, watchdog=True, timeout_s: float | None = None) -> "WatchdogConfig":
        """From fit's `watchdog` (bool or WatchdogConfig) and `watchdog_timeout` options."""
        if isinstance(watchdog, cls):
            return watchdog if timeout_s is None else cls(watchdog.enabled, float(timeout_s),
                                                          watchdog.interval_s)
        base = cls(enabled=watchdog) if timeout_s is None else \
            cls(enabled=watchdog, timeout_s=float(timeout_s))
        # short windows (tests, small jobs) beat more often so the report is fresh
        return cls(base.enabled, base.timeout_s, min(base.interval_s, base.timeout_s / 4))


class Heartbeat:
    """What this rank's main thread is doing: `(seq, step, op, since)`, kept as one tuple
    so the watchdog thread always reads a consistent snapshot.

    `seq` counts operations entered; ranks run the same sequence of operations, so a rank
    with a smaller `seq` than the others is behind them. `since` is `time.monotonic()`.
    """

    def __init__(self):
        self.state = (0, -1, "setup", time.monotonic())

    def enter(self, op: str, step: int | None = None) -> None:
        """Mark the start of `op` (at optimizer step `step`, or the current one).

        Entering the operation the rank is already in only restarts its clock (a long
        evaluation calls this per batch) and does not count as a new operation.
        """
        seq, cur_step, cur_op, _ = self.state
        step = cur_step if step is None else step
        if op == cur_op and step == cur_step:
            self.state = (seq, step, op, time.monotonic())
        else:
            self.state = (seq + 1, step, op, time.monotonic())


def _at(step) -> str:
    return "before the first step" if isinstance(step, int) and step < 0 else f"step {step}"


def _describe(rank: int, b: dict | None) -> str:
    if b is None:
        return f"rank {rank}: no heartbeat"
    return (f"rank {rank}: {_at(b['step'])}, {b['op']!r} for {b['in_op_s']:.1f} s "
            f"(heartbeat {b['age_s']:.1f} s ago, host {b['host']}, pid {b['pid']})")


def classify(beats: dict[int, dict | None], stale_s: float) -> tuple[list[int], list[int]]:
    """(behind, missing) rank lists from every rank's last heartbeat.

    missing: no heartbeat, or none for `stale_s` (process dead, or stuck holding the GIL);
    behind: alive but fewer operations done than the most advanced rank.
    """
    missing = sorted(r for r, b in beats.items() if b is None or b["age_s"] > stale_s)
    alive = {r: b for r, b in beats.items() if r not in missing}
    lead = max((b["seq"] for b in alive.values()), default=0)
    behind = sorted(r for r, b in alive.items() if b["seq"] < lead)
    return behind, missing


def hang_report(rank: int, beats: dict[int, dict | None], timeout_s: float,
                stale_s: float) -> str:
    """The text every rank prints when its watchdog fires.

    Args:
        rank: the reporting rank.
        beats: rank -> heartbeat dict (`seq, step, op, in_op_s, age_s, host, pid`) or None.
        timeout_s: the window that was exceeded.
        stale_s: a heartbeat older than this counts as missing.
    """
    behind, missing = classify(beats, stale_s)
    me = beats.get(rank) or {"step": "?", "op": "?", "in_op_s": timeout_s}
    lines = [f"bigtrain hang watchdog (rank {rank}): no progress for {me['in_op_s']:.1f} s in "
             f"{me['op']!r} at {_at(me['step'])} (watchdog_timeout={timeout_s:g} s)."]
    names = lambda rs: ", ".join(f"rank {r}" for r in rs)  # noqa: E731
    if missing:
        lines.append(f"  missing: {names(missing)} (no recent heartbeat: the process died, never "
                     "started training, or is stuck in native code)")
    if behind:
        lines.append(f"  behind: {names(behind)} (did not reach the operation the others "
                     "wait in)")
    if not missing and not behind:
        lines.append("  every rank is in the same operation: a collective that never "
                     "completes (network, backend) or an operation slower than the window")
    lines += ["  last known position of each rank:"]
    lines += ["    " + _describe(r, beats[r]) for r in sorted(beats)]
    lines.append("  fix: look at what the named ranks were doing (their own logs/stack); if "
                 "one step legitimately takes longer, raise fit(..., watchdog_timeout=...) or "
                 "pass watchdog=False.")
    return "\n".join(lines)


class HangWatchdog:
    """Daemon thread: publish this rank's heartbeat; report and call `on_hang` once when
    the main thread stays in one operation longer than `config.timeout_s`.

    Args:
        store: the job's key-value store (set/get/check/delete_key).
        rank, world_size: this rank and the number of ranks to report on.
        heartbeat: the Heartbeat the main thread updates.
        config: the window and heartbeat interval.
        on_hang: `on_hang(report)` after the report is printed (e.g. exit the process).
        stream: where the report is printed (default: sys.stderr at firing time).
    """

    def __init__(self, store, rank: int, world_size: int, heartbeat: Heartbeat,
                 config: WatchdogConfig, on_hang: Callable[[str], None] | None = None,
                 stream=None):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.heartbeat, self.config, self.on_hang = heartbeat, config, on_hang
        self.stream = stream
        self.report: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bigtrain-watchdog", daemon=True)
        self._ident = {"host": socket.gethostname(), "pid": os.getpid()}

    @property
    def stale_s(self) -> float:
        """A heartbeat older than this means the rank is gone (a few missed beats)."""
        return max(5.0 * self.config.interval_s, 3.0)

    def start(self) -> "HangWatchdog":
        self._publish()  # the first beat is synchronous: peers see this rank at once
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and remove this rank's heartbeat (a later fit starts afresh)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.config.interval_s)
        # The store may sit on a host that is gone (a cut link): forget this rank's
        # heartbeat from a daemon thread and never wait on it for more than a moment.
        forget = threading.Thread(target=self._forget, daemon=True, name="bigtrain-forget")
        forget.start()
        forget.join(timeout=2.0)

    def _forget(self) -> None:
        try:
            self.store.delete_key(KEY.format(rank=self.rank))
        except Exception:  # noqa: BLE001 - the store may already be gone at shutdown
            pass

    def _publish(self) -> float:
        seq, step, op, since = self.heartbeat.state
        in_op = time.monotonic() - since
        beat = {"seq": seq, "step": step, "op": op, "in_op_s": in_op, "wall": time.time(),
                **self._ident}
        try:
            self.store.set(KEY.format(rank=self.rank), json.dumps(beat))
        except Exception:  # noqa: BLE001 - a dead store must not kill the training thread
            pass
        return in_op

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            if self._publish() > self.config.timeout_s:
                self._fire()
                return

    def read_beats(self) -> dict[int, dict | None]:
        """Every rank's last heartbeat with its age in seconds (None: never published)."""
        beats, now = {}, time.time()
        for r in range(self.world_size):
            key = KEY.format(rank=r)
            try:
                b = json.loads(self.store.get(key)) if self.store.check([key]) else None
            except Exception:  # noqa: BLE001 - unreachable store: report what we know
                b = None
            if b is not None:
                # a stuck op keeps ageing after its last beat
                b["age_s"] = max(0.0, now - b["wall"])
                b["in_op_s"] += b["age_s"]
            beats[r] = b
        return beats

    def _fire(self) -> None:
        self.report = hang_report(self.rank, self.read_beats(), self.config.timeout_s,
                                  self.stale_s)
        stream = self.stream or sys.stderr
        print(self.report, file=stream, flush=True)
        if self.on_hang is not None:
            self.on_hang(self.report)
