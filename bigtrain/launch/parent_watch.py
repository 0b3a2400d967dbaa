"""A rank ends when the process that started it dies, SIGKILL included.

torch's elastic agent (`bigtrain run`, torchrun, `fit(devices=N)`) starts every rank in a
session of its own, and stops them itself on SIGINT/SIGTERM. A launcher killed with
SIGKILL (an OOM killer, `kill -9`, a scheduler) cannot: its ranks kept training, or waited
in a collective for the group timeout, holding cores, memory and ports.

On Linux the kernel sends the rank SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG,
which the rank sets on itself as it starts). Elsewhere a daemon thread looks at the parent
pid every `POLL_S` seconds. Either way, a launcher that died before the rank got this far
is caught at once: the rank's parent is then no longer the launcher.

    `bigtrain run`: the launcher puts its pid in LAUNCHER_PID_ENV; `import bigtrain` in a
                    rank whose parent it is calls `follow_launcher` (and drops the variable,
                    so the rank's own children do not take it for theirs).
    fit(devices=N): the rank's entry point calls `follow_multiprocessing_parent`. Its
                    parent process is the fork server, which outlives the launcher as long as
                    a rank lives (every rank holds the server's "alive" pipe), so it waits
                    on multiprocessing's own sentinel of the launcher instead.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from typing import Callable

LAUNCHER_PID_ENV = "BIGTRAIN_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5  # the fallback watcher's period where prctl is missing


def _orphaned_exit(why: str) -> None:
    print(f"bigtrain: {why}; this rank stops", file=sys.stderr, flush=True)
    os._exit(1)


def _set_death_signal() -> bool:
    """Ask the kernel for SIGKILL when the parent dies; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    """Daemon thread body (no prctl): exit once this process has another parent. Only
    Python's sleep runs here, no C++ frame, so ending with the interpreter is safe."""
    while os.getppid() == parent:
        time.sleep(POLL_S)
    _orphaned_exit("the launcher that started this rank is gone")


def die_with_parent(parent_alive: Callable[[], bool] | None = None) -> str:
    """End this process when its parent dies; how ("prctl" or "thread").

    Args:
        parent_alive: whether the launcher still lives, checked once after arming (the
            launcher may have died while this rank started); default: the parent pid is
            not 1 (init adopts orphans).
    """
    parent = os.getppid()
    how = "prctl" if _set_death_signal() else "thread"
    alive = parent_alive() if parent_alive is not None else parent != 1
    if not alive or os.getppid() != parent:
        _orphaned_exit("the launcher that started this rank died while it started")
    if how == "thread":
        threading.Thread(target=_watch, args=(parent,), daemon=True,
                         name="bigtrain-parent-watch").start()
    return how


def follow_launcher() -> str | None:
    """In a rank of `bigtrain run` (its parent's pid in LAUNCHER_PID_ENV), die with it;
    None elsewhere (a plain script, the launcher itself, a rank's own children)."""
    launcher = os.environ.pop(LAUNCHER_PID_ENV, None)
    if not launcher or not launcher.isdigit():
        return None
    if os.getppid() != int(launcher) and _alive(int(launcher)):
        return None  # a child of a rank that kept the variable: not a rank of this launcher
    return die_with_parent(lambda: os.getppid() == int(launcher))


def follow_multiprocessing_parent() -> bool:
    """In a process that multiprocessing started (fit's ranks), die with the process that
    started it; False where there is none (a plain process)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return False
    _set_death_signal()  # started by spawn: the parent is the launcher itself
    threading.Thread(target=_await_sentinel, args=(parent.sentinel,), daemon=True,
                     name="bigtrain-parent-watch").start()
    return True


def _await_sentinel(sentinel: int) -> None:
    """Daemon thread body: the sentinel becomes readable when the launcher's end closes,
    that is when it dies (at once, when it died already). It waits in select(), a C
    call, so ending with the interpreter is safe."""
    multiprocessing.connection.wait([sentinel])
    _orphaned_exit("the process that launched this rank is gone")


def _alive(pid: int) -> bool:
    """`pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
