"""Process-group plumbing shared by every strategy: joining a job started by a launcher,
the local single-process environment, devices and threads per rank."""
from __future__ import annotations

import atexit
import gc
import os
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from bigtrain.parallel.base import DistEnv
from bigtrain.launch.group_start import start_group
from bigtrain.launch.loopback import is_loopback, loopback_store

DEFAULT_TIMEOUT_S = 300.0  # collectives fail after this instead of gloo's 30 minutes


def launched_externally() -> bool:
    """True inside a job started by torchrun / `bigtrain run` (or a fit-launched worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)


def is_main_process() -> bool:
    """True on global rank 0, and in a plain single-process run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


#: The device kind ("cpu", "cuda", "mps") for the ranks of a job started by a launcher that
#: does not pass one itself (torchrun, `bigtrain run`); fit(devices=...) hands its own ranks
#: the kind in the launch payload instead.
DEVICE_ENV = "BIGTRAIN_DEVICE"


def device_kind(devices) -> str:
    """What the ranks compute on for fit's `devices`: "cpu" when asked for (even where a
    GPU exists), "mps" on Apple silicon when asked for, else "cuda" where torch sees one."""
    if devices == "cpu":
        return "cpu"
    if devices == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("devices='mps' but this machine has no Apple GPU (MPS); use "
                             "devices='cpu', 'cuda' or a number of processes")
        return "mps"
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_devices(devices) -> int | None:
    """Number of processes for `devices` (None, an int, "auto", "cpu", "cuda", "mps")."""
    if devices is None or devices in ("cpu", "mps"):
        return None
    if devices == "auto":
        return torch.cuda.device_count() or None
    if devices == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("devices='cuda' but no CUDA device is available; use devices=N "
                             "for N CPU processes")
        return torch.cuda.device_count()
    if isinstance(devices, int) and devices >= 1:
        if torch.cuda.is_available() and devices > torch.cuda.device_count():
            raise ValueError(f"devices={devices} but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s); use devices<="
                             f"{torch.cuda.device_count()} (one process per device)")
        return devices
    raise ValueError(f"devices must be a positive integer, 'auto', 'cpu', 'cuda' or 'mps', "
                     f"got {devices!r}")


def device_for(local_rank: int, kind: str | None = None) -> torch.device:
    """The device of local rank `local_rank`: `kind`, else the job's choice (DEVICE_ENV),
    else cuda:<local rank> where torch sees CUDA, else the CPU."""
    kind = kind or os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(kind)


def threads_per_rank(local_world_size: int) -> int:
    """Cores split evenly between the ranks of this host (at least one each)."""
    return max(1, (os.cpu_count() or 1) // max(1, local_world_size))


EXIT_WAIT_S = 10.0  # at exit, rank 0 waits this long at most for the others to leave


def _destroy_group(held: list | None = None, rank: int = 0, world: int = 1) -> None:
    """At exit, leave the job together. Rank 0's process hosts the job's store: when it
    ended while another rank still tore its group down or held a store connection, a rank
    aborted ("terminate called without an active exception") after the script's work was
    done. So every rank destroys its group, says so in the store and closes its connection;
    rank 0 waits (at most EXIT_WAIT_S: a rank that died never says so) for all of them
    before its store goes. `held`: a one-item list with the job's store.

    destroy_process_group only forgets the group: a DistributedDataParallel wrapper's
    reducer still holds it in a reference cycle, so gloo's threads ran on past this point
    until the interpreter's last collection, with the store and the peers going away under
    them. Collecting here ends them while the interpreter is whole, before saying "left";
    so does waiting for a watchdog thread still inside a slow store call (at most
    EXIT_WAIT_S, a moment after a failure)."""
    from bigtrain.parallel.watchdog import join_store_threads  # fit imported it already
    join_store_threads(1.0 if hasattr(sys, "last_value") else EXIT_WAIT_S)
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
    store = held.pop() if held else None
    if store is None or world < 2 or hasattr(sys, "last_value"):
        return  # a script that failed leaves at once: the others may be gone or cut off
    try:
        store.set_timeout(timedelta(seconds=EXIT_WAIT_S))
        store.add("bigtrain/exit", 1)
        if rank != 0:
            return  # returning drops the last reference: the connection closes
        deadline = time.monotonic() + EXIT_WAIT_S
        while store.add("bigtrain/exit", 0) < world and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # the last rank's connection closes just after its add
    except Exception:  # noqa: BLE001 - the store is gone already: nothing to wait for
        pass


def local_env(kind: str | None = None) -> DistEnv:
    return DistEnv(device=device_for(0, kind))


def rendezvous_store(rank: int, world: int, timeout_s: float):
    """The job's TCPStore at MASTER_ADDR:MASTER_PORT, as torch's env:// rendezvous makes it,
    except that rank 0 does not block until every rank connected (`wait_for_ranks` does
    that next, and can then name the ranks that never came).

    Under torchrun's shared agent store (TORCHELASTIC_USE_AGENT_STORE=True) every rank is
    a client of the launcher's store. A client gives up once the store has not listened
    for `timeout_s`: torch's own client, given a store that never opens, waits out its
    timeout, sleeps 2-4 s and tries once more (a 4 s timeout failed after 8-10 s), so it is
    only started on a store that already listens.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    master = rank == 0 and not agent
    owner = "the launcher" if agent else "rank 0"
    unreachable = (
        f"rank {rank} could not reach the job's store at {host}:{port} within "
        f"{timeout_s:g} s: {owner}, which hosts it, has not started (or MASTER_ADDR/"
        "MASTER_PORT point elsewhere). Start rank 0 / the first node with the same "
        "--rdzv-endpoint, or raise fit(timeout=...).")
    if not master and not await_listener(host, port, limit_s=timeout_s):
        raise RuntimeError(unreachable)
    try:
        if master and is_loopback(host):  # one host: listen on loopback only
            return loopback_store(host, port, world, timedelta(seconds=timeout_s),
                                  wait_for_workers=False, multi_tenant=True)
        return dist.TCPStore(host, port, world, is_master=master,
                             timeout=timedelta(seconds=timeout_s), wait_for_workers=False,
                             multi_tenant=master)
    except (RuntimeError, dist.DistError) as e:
        if master:
            raise RuntimeError(f"rank 0 could not open the job's store on {host}:{port}: {e}; "
                               "is MASTER_PORT already in use?") from e
        raise RuntimeError(unreachable) from e


def await_listener(host: str, port: int, limit_s: float = 2.0) -> bool:
    """Return True once `host`:`port` accepts a connection, False when it did not within
    `limit_s`.

    A rank started together with rank 0 may reach the store before rank 0 listens; torch's
    store client then tries again only about 0.5 s later (measured: a server up 20 ms
    after the client connected it in 0.52 s), which one fit(devices=2) call in eight paid.
    This looks every 1 ms, doubling up to 50 ms, so the caller can also give up at its
    own deadline instead of the client's (see `rendezvous_store`).
    """
    deadline, pause = time.monotonic() + limit_s, 0.001
    while True:
        try:  # one attempt never runs past the deadline (a host that drops the SYN)
            with socket.create_connection((host, port),
                                          timeout=max(0.05, deadline - time.monotonic())):
                return True
        except OSError:
            if time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, 0.05)


def attempt_store(store):
    """`store` as this attempt of the job sees it, clear of an earlier attempt's keys.

    A store that rank 0 hosts (bigtrain's default, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) is
    new for every attempt: it is used as is. The launcher's own store (static rendezvous, or
    torch's shared store) lives across restarts and still holds the last attempt's keys
    (gloo's peer addresses among them, which would send the new ranks to dead ones), so each
    attempt gets a prefix. Only that case uses TORCHELASTIC_RESTART_COUNT: a node that
    replaced a lost one counts its restarts from 0 while the survivors do not, so the count
    cannot name a round that spans hosts.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return store
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"bigtrain/attempt_{attempt}/", store)


def wait_for_ranks(store, rank: int, world: int, timeout_s: float, poll_s: float = 0.1,
                   start: float | None = None) -> None:
    """Announce this rank in `store` and wait until all `world` ranks did; `timeout_s`
    after `start` (a `time.monotonic()` reading; default now) raise RuntimeError naming
    the ranks that never arrived.

    The store is read again after 1 ms, then twice as long each time up to `poll_s`: ranks
    started together arrive a few ms apart, and with a fixed `poll_s` the first to arrive
    waited the whole 0.1 s (a later fit(devices=2) call's join took 0.1 s; now 0.01-0.07 s).

    Rank 0 decides the timeout for everyone (it writes a `timed_out` key) and keeps the
    store (which it may host) open until the ranks that did arrive have read who is
    missing, so every rank fails with the same named list.

    Example:
        wait_for_ranks(store, rank=0, world=4, timeout_s=300)
        # RuntimeError: rank 3 of 4 never joined the job within 300 s ...
    """
    prefix = "bigtrain/arrived/"
    keys = [f"{prefix}{r}" for r in range(world)]
    gave_up, acks = prefix + "timed_out", prefix + "acks"
    store.set(keys[rank], socket.gethostname())
    deadline = (time.monotonic() if start is None else start) + timeout_s
    pause = min(0.001, poll_s)
    try:
        while not store.check(keys):
            if rank == 0 and time.monotonic() > deadline:
                missing = [r for r in range(world) if not store.check([keys[r]])]
                if missing:
                    store.set(gave_up, ",".join(map(str, missing)))
                    _linger_for_acks(store, acks, world - len(missing) - 1)
                    raise RuntimeError(_never_joined(missing, world, rank, timeout_s))
            elif rank != 0 and store.check([gave_up]):  # rank 0's verdict, for everyone
                missing = [int(r) for r in store.get(gave_up).decode().split(",")]
                store.add(acks, 1)
                raise RuntimeError(_never_joined(missing, world, rank, timeout_s))
            elif rank != 0 and time.monotonic() > deadline + 10.0:  # rank 0 itself is absent
                missing = [r for r in range(world) if not store.check([keys[r]])]
                if missing:
                    raise RuntimeError(_never_joined(missing, world, rank, timeout_s))
            time.sleep(pause)
            pause = min(2 * pause, poll_s)
    except dist.DistError as e:
        raise RuntimeError(f"rank {rank} lost the job's store while waiting for the other "
                           f"ranks to join ({e}); rank 0 hosts it: see rank 0's log") from e


def _linger_for_acks(store, acks: str, expected: int, limit_s: float = 10.0) -> None:
    """Rank 0 keeps the store up until `expected` ranks read the timeout (or `limit_s`)."""
    end = time.monotonic() + limit_s
    while store.add(acks, 0) < expected and time.monotonic() < end:
        time.sleep(0.05)


def _never_joined(missing: list[int], world: int, rank: int, timeout_s: float) -> str:
    names = ", ".join(map(str, missing))
    return (f"rank{'s' if len(missing) > 1 else ''} {names} of {world} never joined the job "
            f"within {timeout_s:g} s (seen from rank {rank}; {world - len(missing)} arrived). "
            "Start the missing ranks: on several hosts every node must run the same command "
            "with the right --nnodes/--node-rank and rendezvous endpoint; a rank that crashed "
            "while starting shows its error in its own log. Raise fit(timeout=...) if the "
            "ranks start slowly.")


def join_existing_job(timeout_s: float | None = None, set_threads: bool = True,
                      kind: str | None = None,
                      group_timeout_s: float | None = None) -> DistEnv:
    """Join (or reuse) the process group of a launched job; returns this rank's DistEnv.

    `kind` is the device kind the launcher chose ("cpu", "cuda", "mps"; see device_for).

    Ranks that do not show up within `timeout_s` (default DEFAULT_TIMEOUT_S) are named
    in the RuntimeError, instead of every other rank waiting in silence. `group_timeout_s`
    (default: `timeout_s`) bounds the collectives once the group formed; joining a group
    that exists already, `timeout_s` becomes its collectives' timeout.

    Example:
        env = join_existing_job(timeout_s=60)   # inside torchrun / `bigtrain run`
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = device_for(local_rank, kind)
    if set_threads and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_per_rank(local_world))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = timeout_s or DEFAULT_TIMEOUT_S
        start = time.monotonic()
        store = attempt_store(rendezvous_store(rank, world, timeout))
        # one deadline for the whole join: the wait for the others gets what is left of it
        wait_for_ranks(store, rank, world, timeout, start=start)
        start_group(backend, store, rank, world, timedelta(seconds=group_timeout_s or timeout))
        # the user's script goes on after fit; tidy up at exit, every rank together
        atexit.register(_destroy_group, [store], rank, world)
    elif timeout_s:  # a group formed before this fit (`bigtrain run` on a cluster, Ray)
        dist.distributed_c10d._set_pg_timeout(timedelta(seconds=timeout_s))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank,
                   local_world_size=local_world, device=device)
