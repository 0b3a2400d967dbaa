"""The hang watchdog wired to torch.distributed: it publishes heartbeats to the job's own
c10d store (the one the default process group was created with) and, when it fires,
ends this process so the launcher reports a failure instead of waiting forever.

The detection and the report live in `bigtrain.diagnose.watchdog` (no process-group
objects there); this file only supplies the store and the exit.

Why exit instead of aborting the group: a rank blocked inside a gloo collective is in C++
with the GIL released, so no Python exception can reach it, and aborting the gloo group
from another thread does not wake a pending receive (NCCL's abort would, gloo's does not).
Exiting closes this rank's sockets, so the peers' collectives fail at once too.

Example (what the engine's loop does):
    beat = Heartbeat()
    dog = start_watchdog(env, WatchdogConfig(timeout_s=120), beat)
    try: ...train, calling beat.enter(op, step)...
    finally: stop_watchdog(dog)
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import torch.distributed as dist

from bigtrain.diagnose.watchdog import HangWatchdog, Heartbeat, WatchdogConfig
from bigtrain.parallel.base import DistEnv

HANG_EXIT_CODE = 1  # what the launcher sees from a rank its watchdog ended
#: the watchdog's threads that call the job's store (see HangWatchdog.stop)
STORE_THREADS = ("bigtrain-watchdog", "bigtrain-forget")


def job_store():
    """The c10d store of the default process group, or None when there is no group."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (ValueError, RuntimeError, KeyError):
        return None


def _write_elastic_error(report: str) -> None:
    """Put the report where torch's elastic agent looks for a worker's error, so
    `fit(devices=N)` and torchrun show it as the failure message."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": f"HangDetected: {report}",
                        "extraInfo": {"py_callstack": report,
                                      "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        pass


def fail_job(report: str, grace_s: float = 2.0) -> None:
    """End this rank after a hang report: record it for the launcher, flush, and exit.

    Args:
        report: the watchdog's text.
        grace_s: seconds to wait first, so the other ranks' watchdogs (which fire within a
            heartbeat or two of this one) can still read this rank's heartbeat and print
            their own report before this exit makes their collectives fail.
    """
    _write_elastic_error(report)
    time.sleep(grace_s)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(HANG_EXIT_CODE)


def start_watchdog(env: DistEnv, config: WatchdogConfig, heartbeat: Heartbeat
                   ) -> HangWatchdog | None:
    """Start the hang watchdog of this rank; None in single-process runs, when disabled,
    or when the process group has no store to publish to.

    Args:
        env: this rank's place in the job.
        config: window and heartbeat interval (`fit(watchdog_timeout=...)`).
        heartbeat: the Heartbeat the training loop updates.
    """
    store = job_store()
    if not config.enabled or not env.distributed or store is None:
        return None
    grace = min(2.0 * config.interval_s + 0.5, 5.0)
    dog = HangWatchdog(store, dist.get_rank(), dist.get_world_size(), heartbeat, config,
                       on_hang=lambda report: fail_job(report, grace))
    return dog.start()


def stop_watchdog(dog: HangWatchdog | None) -> None:
    if dog is not None:
        dog.stop()


def join_store_threads(limit_s: float) -> list[str]:
    """Wait at most `limit_s` seconds for the watchdog's threads that `stop_watchdog` left
    running (a heartbeat or its removal still inside a slow store call); the names of
    those still running after that.

    Why at exit: a daemon thread inside a store call (C++, the GIL released) that returns
    while the interpreter shuts down is ended by Python in the middle of that C++ frame,
    and the process aborts ("terminate called without an active exception") after its
    work was done. The job's exit (bigtrain.launch.join) calls this before it leaves the
    group.
    """
    deadline = time.monotonic() + limit_s
    for thread in threading.enumerate():
        if thread.name in STORE_THREADS:
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t.name in STORE_THREADS and t.is_alive()]
