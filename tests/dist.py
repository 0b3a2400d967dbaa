"""The one helper every distributed test uses to start gloo ranks.

`run_ranks(fn, world_size, *args)` starts `world_size` processes (`rank_context`), joins them
into a gloo process group through a FileStore in a temporary folder (no TCP port to pick, so
no port races), runs `fn(rank, world_size, *args)` in each and returns the per-rank results
in rank order. A hard timeout kills every rank and raises with the ranks' errors; the
process group is always destroyed.

`fn` must be a module-level function of an importable module (a test file is fine).

Example:
    def _allreduce(rank, world_size):
        t = torch.tensor([rank + 1.0]); dist.all_reduce(t); return t.item()

    assert run_ranks(_allreduce, 2) == [3.0, 3.0]
"""
from __future__ import annotations

import os
import pickle
import tempfile
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bigtrain.launch.group_start import start_group
from bigtrain.launch.launcher import default_start_method

PG_TIMEOUT_S = 30.0  # a collective that waits longer than this fails instead of hanging


def rank_context():
    """The multiprocessing context that starts rank processes: the one fit(devices=N)'s
    launcher uses (`bigtrain.launch.launcher.default_start_method`), a fork server that has
    imported torch and bigtrain once and forks every rank from that state, or spawn where
    there is no fork server (Windows) or with `BIGTRAIN_RANK_START=spawn` (to compare the
    two).

    Why: a spawned rank imports torch and bigtrain itself, 2-3 s of CPU, so starting 4 ranks
    on 2 cores took 9 s before any test code ran; a forked one starts in a fraction of a
    second. The server runs no torch op before it forks, so a rank's thread pool starts
    fresh. A rank gets the server's environment, not the caller's, so callers pass
    `dict(os.environ)` on and `_entry` restores it (`set_env`). Its stdout and stderr are the
    server's too, the ones the first caller had: a test checks what `fn` returns, never what
    a rank prints (capfd does not see it)."""
    return mp.get_context(default_start_method())


def set_env(env: dict) -> None:
    """Make this process's environment `env` (the caller's, taken when it started us)."""
    os.environ.clear()
    os.environ.update(env)


def _entry(fn, rank, world_size, store_path, pg_timeout, queue, args, kwargs, env):
    set_env(env)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep test traffic on loopback
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        store = dist.FileStore(store_path, world_size)
        start_group("gloo", store, rank, world_size, timedelta(seconds=pg_timeout), tag="run")
        result = fn(rank, world_size, *args, **kwargs)
        # plain pickle copies tensor data (no shared-memory handles that die with this process)
        queue.put((rank, "ok", pickle.dumps(result)))
    except BaseException:  # noqa: BLE001 - every failure is reported to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world_size: int, *args, timeout: float = 120.0,
              pg_timeout: float = PG_TIMEOUT_S, **kwargs) -> list:
    """Run `fn(rank, world_size, *args, **kwargs)` on `world_size` gloo ranks.

    Args:
        fn: module-level function; its return value must be picklable.
        world_size: number of ranks (keep it <= 4 on a 2-core machine).
        timeout: hard wall-clock limit in seconds for the whole group.
        pg_timeout: the process group's collective timeout in seconds.

    Returns:
        The ranks' return values, in rank order.
    """
    ctx = rank_context()
    queue = ctx.Queue()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bigtrain-test-") as tmp:
        store_path = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_entry, daemon=True,
                             args=(fn, r, world_size, store_path, pg_timeout, queue, args, kwargs,
                                   env))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        results, errors = {}, {}
        try:
            import queue as _q
            deadline = timeout
            import time
            t0 = time.monotonic()
            while len(results) + len(errors) < world_size:
                left = deadline - (time.monotonic() - t0)
                if left <= 0:
                    raise TimeoutError(
                        f"distributed test did not finish within {timeout:.0f}s; "
                        f"finished ranks: {sorted(results)}; errors: {errors}")
                try:
                    rank, status, value = queue.get(timeout=min(left, 1.0))
                except _q.Empty:
                    dead = [r for r, p in enumerate(procs)
                            if p.exitcode not in (None, 0) and r not in results and r not in errors]
                    for r in dead:
                        errors[r] = f"rank {r} died with exit code {procs[r].exitcode}"
                    continue
                (results if status == "ok" else errors)[rank] = value
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join()
        if errors:
            msg = "\n".join(f"--- rank {r} ---\n{e}" for r, e in sorted(errors.items()))
            raise RuntimeError(f"{len(errors)} of {world_size} ranks failed:\n{msg}")
        return [pickle.loads(results[r]) for r in range(world_size)]
