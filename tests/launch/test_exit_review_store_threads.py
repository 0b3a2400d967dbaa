"""At exit, no watchdog thread is still inside a store call (bigtrain.parallel.watchdog.
join_store_threads, called by bigtrain.launch.join._destroy_group).

`HangWatchdog.stop` waits for its heartbeat thread and for the removal of this rank's
heartbeat only for a moment (the store may sit on a host that is gone). On a loaded host
such a daemon thread could still be inside the store call when the interpreter shut down;
returning from it then aborts the process ("terminate called without an active
exception") after the script's work was done."""
import threading
import time

from bigtrain.diagnose.watchdog import HangWatchdog, Heartbeat, WatchdogConfig
from bigtrain.launch.join import _destroy_group


class SlowStore:
    """A store whose removal of a key takes longer than `stop` waits for it."""

    def __init__(self, delay_s: float):
        self.delay_s, self.removed = delay_s, []

    def set(self, key, value):
        pass

    def delete_key(self, key):
        time.sleep(self.delay_s)
        self.removed.append(key)


def _watchdog_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name in ("bigtrain-watchdog", "bigtrain-forget") and t.is_alive()]


def test_the_exit_waits_for_a_heartbeat_removal_still_in_the_store():
    store = SlowStore(delay_s=3.0)
    dog = HangWatchdog(store, 0, 2, Heartbeat(), WatchdogConfig(timeout_s=60, interval_s=0.05))
    dog.start()
    dog.stop()  # gives the removal 2 s: it is still inside the store call
    assert _watchdog_threads() == ["bigtrain-forget"] and store.removed == []
    _destroy_group(None, rank=0, world=1)
    assert _watchdog_threads() == []
    assert len(store.removed) == 1  # it finished its call before the process went on
